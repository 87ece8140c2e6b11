#!/usr/bin/perl

# PostgreSQL going away and coming back: /readyz turns into a 503
# database_unavailable with Retry-After within seconds (no hang, no worker
# crash), /healthz stays up, and once PostgreSQL is back /readyz is 200
# again without any reload: the pool reconnects by itself.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(19);

# whatever happens below, leave PostgreSQL running for the next test
my $pg_stopped = 0;
END {
	local $?;
	$t->pg_ctl('start') if $pg_stopped && $t;
}

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    # short timeouts so that an outage is reported in seconds
    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=2 connect_timeout=2s query_timeout=3s;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location = /healthz { payflow_health; }
        location = /readyz  { payflow_ready; }
    }
}

EOF

$t->run;

sub readyz { http_parse(http_get('/readyz', timeout => 10)) }

###############################################################################

my $r = readyz();
is($r->{status}, 200, 'readyz 200 while PostgreSQL is up') or diag($r->{raw});

# a few more so that both pooled connections exist when PostgreSQL stops
readyz() for 1 .. 4;

###############################################################################
# PostgreSQL stops: 503 database_unavailable within 5 s

$pg_stopped = 1;
ok($t->pg_ctl('stop'), 'PostgreSQL stopped');

my $stopped_at = time;
my $down = $t->poll(5, sub {
	my $r = readyz();
	return ($r->{status} // 0) == 503 ? $r : undef;
}, 0.2);
my $took = time - $stopped_at;

ok($down, sprintf('readyz 503 within 5 s of the stop (%.1f s)', $took));
$down ||= readyz();

is($down->{status}, 503, 'down: 503');
like($down->{headers}{'content-type'} // '', qr{^application/json\b},
	'down: application/json');
is($down->{json}{success}, JSON::PP::false, 'down: success false')
	or diag($down->{raw});
is($down->{json}{error}{type}, 'api_error', 'down: error.type api_error');
is($down->{json}{error}{code}, 'database_unavailable',
	'down: error.code database_unavailable');
like($down->{headers}{'retry-after'} // '', qr/^\d+$/,
	'down: Retry-After in seconds');
like($down->{headers}{'x-request-id'} // '', qr/^req_[0-9A-Za-z]{24}$/,
	'down: X-Request-Id');

# while down, answers stay quick: no request waits for a dead database
my $t0 = time;
$r = readyz();
is($r->{status}, 503, 'down: still 503');
cmp_ok(time - $t0, '<', 3, 'down: answered in under 3 s');

is(http_parse(http_get('/healthz'))->{status}, 200,
	'down: healthz stays 200 (liveness does not need the database)');

ok($t->no_worker_crash, 'down: no worker crash');

###############################################################################
# PostgreSQL back: 200 again without reload

ok($t->pg_ctl('start'), 'PostgreSQL started');
$pg_stopped = 0;

my $started_at = time;
my $up = $t->poll(10, sub { (readyz()->{status} // 0) == 200 }, 0.25);
$took = time - $started_at;
ok($up, sprintf('readyz 200 again within 10 s, no reload (%.1f s)', $took));

# every pooled connection was replaced, not only the first one tried
my @st = map { readyz()->{status} // 0 } 1 .. 6;
is("@st", '200 200 200 200 200 200', 'six more readyz in a row are 200');

unlike($t->error_log, qr/signal 1 \(SIGHUP\)/, 'no reload happened');
ok($t->no_worker_crash, 'no worker crash after recovery');

###############################################################################
