# PayFlow build, run and test entry points.
#
#   make            build build/modules/ngx_http_payflow_module.so
#   make run        install what is missing, build, start PayFlow (dev)
#   make stop       stop nginx, PostgreSQL and Redis started by make run
#   make test       install what is missing, build, run the test suite
#                   (one file: make test T=t/002-health.t)
#   make bench      benchmarks (wrk): return 200 vs /v1/me vs /readyz,
#                   the rate limiter, POST /v1/payments vs pgbench
#   make static     build a static nginx with --add-module=. (needs sources)
#   make key ARGS="test --tenant ten_... --role developer"
#                   mint a static key with the development pepper

NGX_SRC ?=	/usr/share/nginx/src
CC ?=		cc
BUILD :=	build
NGX_BUILD :=	$(BUILD)/nginx-$(notdir $(CC))
MODULE :=	$(BUILD)/modules/ngx_http_payflow_module.so

# Debian's own hardening flags; warnings are added after configure so that
# nginx's feature probes are not affected by -Werror.  Unused parameters
# are allowed, as nginx allows them: handlers share one signature.
CC_OPT :=	-g -O2 -fstack-protector-strong -Wformat \
		-Werror=format-security -fPIC -D_FORTIFY_SOURCE=2
LD_OPT :=	-Wl,-z,relro -Wl,-z,now -fPIC
WARN :=		-Wall -Wextra -Wno-unused-parameter -Werror

SOURCES :=	config $(wildcard shared/*.[ch] ngx_payflow_*/*.[ch] \
		ngx_payflow_*/*/*.[ch])

.PHONY: all build deps run stop test test-asan fuzz bench static clang key \
	clean distclean

all: build

build: $(MODULE)

$(NGX_BUILD)/objs/Makefile: config
	@test -f $(NGX_SRC)/configure || { \
	    echo "nginx sources not found in $(NGX_SRC):" \
	         "run 'make deps' (package nginx-dev)"; exit 1; }
	rm -rf $(NGX_BUILD)
	mkdir -p $(NGX_BUILD)
	cp -a $(NGX_SRC)/. $(NGX_BUILD)/
	cd $(NGX_BUILD) && bash -c '. ./conf_flags && ./configure \
	    "$${NGX_CONF_FLAGS[@]}" --with-cc=$(CC) \
	    --with-cc-opt="$(CC_OPT)" --with-ld-opt="$(LD_OPT)" \
	    --add-dynamic-module=$(CURDIR)' > configure.log 2>&1 \
	    || { cat $(NGX_BUILD)/configure.log; rm -f $(NGX_BUILD)/objs/Makefile; \
	         exit 1; }
	sed -i 's/^CFLAGS = .*/& $(WARN)/' $(NGX_BUILD)/objs/Makefile

$(MODULE): $(NGX_BUILD)/objs/Makefile $(SOURCES)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	mkdir -p $(dir $(MODULE))
	@# a new inode: a running nginx keeps the one it mapped
	cp $(NGX_BUILD)/objs/ngx_http_payflow_module.so $(MODULE).tmp
	mv -f $(MODULE).tmp $(MODULE)

clang:
	$(MAKE) CC=clang MODULE=$(BUILD)/clang/ngx_http_payflow_module.so

deps:
	@scripts/deps

run: deps build
	@scripts/run start

stop:
	@scripts/run stop

test: deps build
	@scripts/test $(T)

# libFuzzer harnesses (fuzz/), FUZZ_TIME seconds each (default 60)
fuzz: deps
	@scripts/fuzz $(FUZZ)

# the suite against nginx and the module built with ASan and UBSan
test-asan: deps
	@scripts/asan-build
	@scripts/test-asan $(T)

bench: deps build
	@bench/run
	@bench/ratelimit
	@bench/payments
	@bench/providers
	@bench/webhooks
	@bench/outbox
	@bench/risk

static:
	@scripts/static-build

key:
	@test -s var/dev/pepper || { echo "run 'make run' first"; exit 1; }
	@scripts/pf-key --pepper-file var/dev/pepper $(ARGS)

clean:
	rm -rf $(BUILD)

distclean: stop clean
	-scripts/pf-env test stop
	-scripts/pf-env bench stop
	rm -rf var
