package PayFlow::Test;

# A small test harness for PayFlow, in the spirit of nginx-tests'
# lib/Test/Nginx.pm: every test gets its own temporary prefix directory,
# its own free ports and its own nginx master process; HTTP is spoken over
# raw sockets so that the tests see exactly what nginx sends.
#
# Only core Perl modules are used, plus IO::Socket::SSL (Debian package
# libio-socket-ssl-perl), which is loaded on demand for TLS tests.
#
# Environment (exported by scripts/test):
#   PAYFLOW_ROOT, PAYFLOW_ENV          repo root, service environment name
#   PAYFLOW_MODULE                     path of ngx_http_payflow_module.so
#   PAYFLOW_NGINX                      nginx binary (default /usr/sbin/nginx)
#   PAYFLOW_PG_HOST, PAYFLOW_PG_PORT, PAYFLOW_PG_DB, PAYFLOW_PG_USER,
#   PAYFLOW_PG_PASSWORD_FILE           the test PostgreSQL
#   PAYFLOW_TEST_KEEP=1                keep the temporary directory
#   PAYFLOW_TEST_DEBUG=1               error_log level debug instead of info

use warnings;
use strict;

use Exporter qw/import/;

our @EXPORT = qw/http http_get http_request http_end http_parse http_many
	api bearer/;

use Carp qw/croak/;
use FindBin ();
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw/:sys_wait_h/;
use Scalar::Util qw/weaken/;
use Test::More ();
use Time::HiRes qw/time sleep/;

# The most recently created harness: the exported HTTP helpers use its
# port(8080) when no port is given, like nginx-tests does.
our $CURRENT;

# Every live harness, weakly held, so END can stop their nginx.
my @INSTANCES;

# Child processes started by psql_bg, reaped at END at the latest.
my %BG_PIDS;

###############################################################################
# construction and prerequisites

sub new {
	my ($class, %args) = @_;

	my $keep = $ENV{PAYFLOW_TEST_KEEP} ? 1 : 0;
	my $dir = File::Temp::tempdir('payflow-test-XXXXXXXX',
		TMPDIR => 1, CLEANUP => !$keep);

	# nginx running as root switches its workers to "nobody", which must
	# still be able to reach the files below this directory.
	chmod 0755, $dir or croak "chmod $dir: $!";

	my $self = bless {
		dir => $dir,
		ports => {},
		module => exists $args{module} ? $args{module} : 1,
		conf => 'nginx.conf',
		skip => [],
		owner => $$,
	}, $class;

	Test::More::diag("PAYFLOW_TEST_KEEP: test directory $dir") if $keep;

	$CURRENT = $self;
	push @INSTANCES, $self;
	weaken($INSTANCES[-1]);

	return $self;
}

sub testdir { $_[0]->{dir} }

sub nginx_binary {
	return $ENV{PAYFLOW_NGINX} || '/usr/sbin/nginx';
}

# Requirements are collected and checked by plan(), so a test reads
#   $t->has_module->has_pg->plan(12);

sub has_module {
	my ($self) = @_;
	my $m = $ENV{PAYFLOW_MODULE};
	if (!$m) {
		push @{$self->{skip}}, 'PAYFLOW_MODULE not set';
	} elsif (!-f $m) {
		push @{$self->{skip}}, "PAYFLOW_MODULE $m not found";
	}
	return $self;
}

sub has_pg {
	my ($self) = @_;
	for my $v (qw/PAYFLOW_PG_PORT PAYFLOW_PG_HOST PAYFLOW_PG_DB
		PAYFLOW_PG_USER PAYFLOW_PG_PASSWORD_FILE PAYFLOW_ROOT
		PAYFLOW_ENV/)
	{
		next if defined $ENV{$v} && $ENV{$v} ne '';
		push @{$self->{skip}}, "$v not set";
		return $self;
	}
	my $pf = "$ENV{PAYFLOW_ROOT}/scripts/pf-env";
	push @{$self->{skip}}, "$pf not executable" unless -x $pf;
	return $self;
}

# Debian's lua-nginx-module (libnginx-mod-http-lua), for the provider
# emulators in t/emulators
my @LUA_MODULES = ('/usr/lib/nginx/modules/ndk_http_module.so',
	'/usr/lib/nginx/modules/ngx_http_lua_module.so');

sub has_lua {
	my ($self) = @_;
	for my $m (@LUA_MODULES) {
		push @{$self->{skip}}, "$m not found (libnginx-mod-http-lua)"
			unless -f $m;
	}
	return $self;
}

sub lua_modules {
	return join '', map { "load_module $_;\n" } @LUA_MODULES;
}

# the provider emulators, copied where the workers may read them (the
# checkout may be in a home directory they cannot enter)
sub emulators {
	my ($self) = @_;
	my $to = "$self->{dir}/emulators";
	return $to if -d $to;
	mkdir $to or croak "mkdir $to: $!";
	for my $f (glob "$FindBin::Bin/emulators/*.lua") {
		(my $name = $f) =~ s{.*/}{};
		$self->write_file("emulators/$name", $self->read_file($f));
	}
	return $to;
}

sub has_ssl {
	my ($self) = @_;
	push @{$self->{skip}}, 'IO::Socket::SSL not installed'
		unless eval { require IO::Socket::SSL; 1 };
	push @{$self->{skip}}, 'openssl binary not found'
		unless grep { -x "$_/openssl" } split /:/, ($ENV{PATH} || '');
	return $self;
}

# Skip at once unless every named variable is set (and, for
# PAYFLOW_MODULE, names an existing file).
sub skip_unless_env {
	my ($self, @vars) = @_;
	for my $v (@vars) {
		if (!defined $ENV{$v} || $ENV{$v} eq '') {
			Test::More::plan(skip_all => "$v not set");
		}
		if ($v eq 'PAYFLOW_MODULE' && !-f $ENV{$v}) {
			Test::More::plan(skip_all => "PAYFLOW_MODULE $ENV{$v} "
				. "not found");
		}
	}
	return $self;
}

sub skip_reasons { @{$_[0]->{skip}} }

sub plan {
	my ($self, $n) = @_;

	my $nginx = nginx_binary();
	push @{$self->{skip}}, "nginx binary $nginx not executable"
		unless -x $nginx;

	if (@{$self->{skip}}) {
		Test::More::plan(skip_all => join('; ', @{$self->{skip}}));
	}

	Test::More::plan(defined $n ? (tests => $n) : ());
	return $self;
}

###############################################################################
# files and placeholders

sub port {
	my ($self, $name) = @_;
	croak 'port name required' unless defined $name;

	return $self->{ports}{$name} if exists $self->{ports}{$name};

	# Let the kernel pick a free port; retry on the unlikely event that it
	# hands out one already given to another placeholder.
	my %taken = map { $_ => 1 } values %{$self->{ports}};
	for (1 .. 50) {
		my $s = IO::Socket::INET->new(
			LocalAddr => '127.0.0.1',
			LocalPort => 0,
			Proto => 'tcp',
			Listen => 1,
		) or croak "cannot bind a free port: $!";
		my $p = $s->sockport;
		close $s;
		next if $taken{$p};
		return $self->{ports}{$name} = $p;
	}
	croak "no free port for $name";
}

sub _error_level {
	return $ENV{PAYFLOW_TEST_DEBUG} ? 'debug' : 'info';
}

sub test_globals {
	my ($self) = @_;
	my $d = $self->{dir};
	my $s = '';

	if ($self->{module} && $ENV{PAYFLOW_MODULE}) {
		$s .= "load_module $ENV{PAYFLOW_MODULE};\n";
	}

	# the workers keep the sanitizers' options (nginx clears the rest of
	# the environment), so that UBSan reports land in make test-asan's
	# files, not only in error.log
	for my $v (qw(ASAN_OPTIONS UBSAN_OPTIONS)) {
		$s .= "env $v;\n" if defined $ENV{$v};
	}

	$s .= "daemon off;\n"
		. "master_process on;\n"
		. "worker_processes 1;\n"
		. "pid $d/nginx.pid;\n"
		. "error_log $d/error.log " . _error_level() . ";\n";

	return $s;
}

sub test_globals_http {
	my ($self) = @_;
	my $d = $self->{dir};

	return "access_log $d/access.log;\n"
		. "client_body_temp_path $d/client_body_temp;\n"
		. "proxy_temp_path $d/proxy_temp;\n"
		. "fastcgi_temp_path $d/fastcgi_temp;\n"
		. "uwsgi_temp_path $d/uwsgi_temp;\n"
		. "scgi_temp_path $d/scgi_temp;\n";
}

sub pg_conninfo {
	return join ' ',
		"host=" . ($ENV{PAYFLOW_PG_HOST} // ''),
		"port=" . ($ENV{PAYFLOW_PG_PORT} // ''),
		"dbname=" . ($ENV{PAYFLOW_PG_DB} // ''),
		"user=" . ($ENV{PAYFLOW_PG_USER} // '');
}

sub expand {
	my ($self, $text) = @_;

	$text =~ s/%%TEST_GLOBALS%%/$self->test_globals/ge;
	$text =~ s/%%TEST_GLOBALS_HTTP%%/$self->test_globals_http/ge;
	$text =~ s/%%PORT_(\w+?)%%/$self->port($1)/ge;
	$text =~ s/%%PG_CONNINFO%%/pg_conninfo()/ge;
	$text =~ s/%%PG_PASSWORD_FILE%%/$ENV{PAYFLOW_PG_PASSWORD_FILE} \/\/ ''/ge;
	$text =~ s/%%TESTDIR%%/$self->{dir}/g;
	$text =~ s/%%LUA_MODULES%%/lua_modules()/ge;
	$text =~ s/%%EMULATORS%%/$self->emulators/ge;
	$text =~ s/%%PEPPER_FILE%%/$self->pepper_file/ge;
	$text =~ s/%%REDIS_PORT%%/$ENV{PAYFLOW_REDIS_PORT} \/\/ ''/ge;
	$text =~ s/%%ADMIN_KEY%%/'payflow_admin_key ' . $self->admin_hash . ';'/ge;

	# a typo in a placeholder would otherwise reach nginx verbatim
	if ($text =~ /(%%[A-Z][A-Z0-9_]*%%)/) {
		croak "unknown placeholder $1";
	}

	return $text;
}

# the pepper of this test's keys: 32 random bytes, hex
sub pepper_file {
	my ($self) = @_;
	my $path = "$self->{dir}/pepper";

	unless (-e $path) {
		open my $in, '<:raw', '/dev/urandom' or die "urandom: $!";
		read($in, my $bytes, 32) == 32 or die "short read";
		open my $fh, '>', $path or die "$path: $!";
		print $fh unpack('H*', $bytes), "\n";
		close $fh;
	}

	return $path;
}

# scripts/pf-key with this test's pepper: (secret, hash)
sub pf_key {
	my ($self, @args) = @_;
	my $root = $ENV{PAYFLOW_ROOT} // "$FindBin::Bin/..";

	open my $fh, '-|', "$root/scripts/pf-key", '--pepper-file',
		$self->pepper_file, @args, '--shell'
		or die "pf-key: $!";
	my %kv = map { /^(\w+)=(.*)$/ ? ($1, $2) : () } <$fh>;
	close $fh or die "pf-key @args failed";

	return ($kv{SECRET}, $kv{HASH});
}

# the test environment's Redis: "start", "stop", or a signal ("STOP",
# "CONT") sent to it, to make it slow
sub redis_ctl {
	my ($self, $what) = @_;
	my $root = $ENV{PAYFLOW_ROOT} // "$FindBin::Bin/..";

	if ($what eq 'start' || $what eq 'stop') {
		return system("$root/scripts/pf-env",
			$ENV{PAYFLOW_ENV} // 'test', "redis-$what") == 0;
	}

	open my $fh, '<', "$root/var/" . ($ENV{PAYFLOW_ENV} // 'test')
		. '/redis/redis.pid' or return 0;
	chomp(my $pid = <$fh>);
	return kill($what, $pid);
}

# the operator credential of %%ADMIN_KEY%%
sub admin_secret {
	my ($self) = @_;
	$self->{admin} //= [ $self->pf_key('admin') ];
	return $self->{admin}[0];
}

sub admin_hash {
	my ($self) = @_;
	$self->admin_secret;
	return $self->{admin}[1];
}

sub write_file {
	my ($self, $name, $content) = @_;
	my $path = "$self->{dir}/$name";
	open my $fh, '>', $path or croak "open $path: $!";
	binmode $fh;
	print $fh $content;
	close $fh or croak "close $path: $!";
	return $path;
}

sub write_file_expand {
	my ($self, $name, $content) = @_;
	return $self->write_file($name, $self->expand($content));
}

sub read_file {
	my ($self, $name) = @_;
	my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
	open my $fh, '<', $path or return '';
	local $/;
	my $c = <$fh>;
	close $fh;
	return defined $c ? $c : '';
}

###############################################################################
# nginx process

# In a forked child: become @cmd, or report why not and leave without
# running any END block or destructor of the parent's objects.
sub _exec {
	my (@cmd) = @_;
	{ no warnings 'exec'; exec { $cmd[0] } @cmd; }
	print STDERR "exec $cmd[0]: $!\n";
	POSIX::_exit(127);
}

sub _nginx_args {
	my ($self, $conf, $elog) = @_;
	my $d = $self->{dir};
	return ('-p', "$d/", '-c', $conf || $self->{conf},
		'-e', $elog || "$d/error.log");
}

# nginx -t with the test's prefix; returns (exit code, output).  The output
# is nginx's stdout and stderr, plus what it logged to the -e file (a
# separate file, so the running server's log is left alone).
sub test_config {
	my ($self, $conf) = @_;
	my $d = $self->{dir};
	my $elog = "$d/test_config.log";
	unlink $elog;

	my $nginx = nginx_binary();
	my @args = ('-t', $self->_nginx_args($conf, $elog));

	my $pid = open(my $fh, '-|');
	croak "fork: $!" unless defined $pid;

	if ($pid == 0) {
		open STDIN, '<', '/dev/null';
		open STDERR, '>&', \*STDOUT;
		_exec($nginx, @args);
	}

	my $out = do { local $/; <$fh> };
	$out = '' unless defined $out;
	close $fh;
	my $rc = $? >> 8;

	my $logged = $self->read_file($elog);
	$out .= $logged if length $logged && index($out, $logged) < 0;

	return ($rc, $out);
}

sub run {
	my ($self, %opts) = @_;
	croak 'nginx already running' if $self->{pid};

	my $d = $self->{dir};
	my $nginx = nginx_binary();
	my @args = $self->_nginx_args($opts{conf});

	my $pid = fork;
	croak "fork: $!" unless defined $pid;

	if ($pid == 0) {
		# stdout/stderr of the master go to a file, never into TAP
		open STDIN, '<', '/dev/null';
		open STDOUT, '>>', "$d/stderr.log";
		open STDERR, '>&', \*STDOUT;
		_exec($nginx, @args);
	}

	$self->{pid} = $pid;

	my @ports = $opts{ports}
		? map { $self->port($_) } @{$opts{ports}}
		: sort { $a <=> $b } values %{$self->{ports}};
	my $timeout = $opts{timeout} || 10;
	my $deadline = time + $timeout;
	my %up;

	while (1) {
		if (waitpid($pid, WNOHANG) == $pid) {
			my $status = $?;
			delete $self->{pid};
			$self->{reported} = 1;
			die "nginx exited at startup (status $status)\n"
				. $self->_logs_for_humans;
		}

		for my $p (@ports) {
			next if $up{$p};
			my $s = IO::Socket::INET->new(
				PeerAddr => '127.0.0.1',
				PeerPort => $p,
				Proto => 'tcp',
			) or next;
			close $s;
			$up{$p} = 1;
		}

		last if keys %up == @ports;

		if (time > $deadline) {
			my @down = grep { !$up{$_} } @ports;
			$self->{reported} = 1;
			$self->stop;
			die "nginx did not accept on port(s) @down within "
				. "${timeout}s\n" . $self->_logs_for_humans;
		}

		sleep 0.05;
	}

	return $self;
}

sub pid { $_[0]->{pid} }

sub _wait_exit {
	my ($pid, $timeout) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline) {
		my $r = waitpid($pid, WNOHANG);
		return 1 if $r == $pid || $r == -1;
		sleep 0.05;
	}
	return 0;
}

sub stop {
	my ($self) = @_;
	local ($?, $!, $@);

	return $self unless $self->{pid} && $$ == $self->{owner};
	my $pid = delete $self->{pid};

	# graceful first, as an operator would; escalate if it hangs
	kill 'QUIT', $pid;
	if (!_wait_exit($pid, 10)) {
		Test::More::diag("nginx $pid ignored QUIT for 10s, sending TERM");
		kill 'TERM', $pid;
		if (!_wait_exit($pid, 3)) {
			kill 'KILL', $pid;
			waitpid($pid, 0);
		}
	}

	$self->_report;
	$self->_collect_logs;
	return $self;
}

# make test keeps every nginx's logs (PAYFLOW_LOG_DIR) and scans them all
# for secrets afterwards (scripts/log-secrets)
my $LOG_SEQ = 0;

sub _collect_logs {
	my ($self) = @_;
	my $to = $ENV{PAYFLOW_LOG_DIR} or return;
	(my $name = $0) =~ s{.*/}{};
	$LOG_SEQ++;
	for my $log (qw(error.log access.log)) {
		my $from = "$self->{dir}/$log";
		next unless -f $from;
		open my $in, '<', $from or next;
		open my $out, '>', "$to/$name.$$.$LOG_SEQ.$log" or next;
		print $out $_ while <$in>;
		close $out;
		close $in;
	}
}

# Send HUP and wait until a new worker process has started, so the new
# configuration is live (old workers may still finish their requests).
sub reload {
	my ($self, %opts) = @_;
	croak 'nginx not running' unless $self->{pid};

	my $count = () = $self->error_log =~ /start worker process/g;
	kill 'HUP', $self->{pid};

	my $deadline = time + ($opts{timeout} || 10);
	while (time < $deadline) {
		my $now = () = $self->error_log =~ /start worker process/g;
		return 1 if $now > $count;
		sleep 0.05;
	}

	Test::More::diag('reload: no new worker process within timeout');
	return 0;
}

sub error_log {
	my ($self) = @_;
	return $self->read_file('error.log');
}

sub stderr_log {
	my ($self) = @_;
	return $self->read_file('stderr.log');
}

sub _logs_for_humans {
	my ($self) = @_;
	my $s = "---- error.log ----\n" . $self->error_log;
	my $e = $self->stderr_log;
	$s .= "---- nginx stdout/stderr ----\n$e" if length $e;
	return $s;
}

# Lines of an error log that show a worker crash.
sub crash_lines_in {
	my ($text) = @_;
	return grep {
		/exited on signal/
		|| /core dumped/
		|| /\[alert\].*(?:worker|cache \w+) process \d+ exited/
	} split /\n/, (defined $text ? $text : '');
}

sub crash_lines {
	my ($self) = @_;
	return crash_lines_in($self->error_log);
}

sub no_worker_crash {
	my ($self) = @_;
	return !$self->crash_lines;
}

sub assert_no_crash {
	my ($self, $name) = @_;
	my @lines = $self->crash_lines;
	Test::More::ok(!@lines, $name || 'no worker crash')
		or Test::More::diag(join "\n", @lines);
	return !@lines;
}

sub alert_lines {
	my ($self) = @_;
	return grep { /\[(?:alert|emerg|crit)\]/ } split /\n/, $self->error_log;
}

# After nginx stops (or at END): point at crashes, and when the test is
# failing show the error log, as that is where the server says why.
sub _report {
	my ($self) = @_;

	my @crash = $self->crash_lines;
	Test::More::diag("worker crash in error.log:\n" . join("\n", @crash))
		if @crash;

	return if $self->{reported};

	my $failing = !Test::More->builder->is_passing || $self->{exit_failing};
	if ($failing && -s "$self->{dir}/error.log") {
		$self->{reported} = 1;
		Test::More::diag($self->_logs_for_humans);
	}
}

sub DESTROY {
	my ($self) = @_;
	return unless $self->{owner} && $$ == $self->{owner};
	$self->stop;
}

END {
	my $exit = $?;
	local ($?, $!, $@);

	for my $t (grep { defined } @INSTANCES) {
		next unless $t->{owner} == $$;
		$t->{exit_failing} = 1 if $exit;
		if ($t->{pid}) {
			$t->stop;
		} elsif ($exit) {
			$t->_report;
		}
	}

	for my $pid (keys %BG_PIDS) {
		next unless $BG_PIDS{$pid} == $$;
		kill 'TERM', $pid;
		_wait_exit($pid, 3) or do { kill 'KILL', $pid; waitpid($pid, 0) };
	}
}

###############################################################################
# PostgreSQL of the test environment (scripts/pf-env)

sub _pf_env_cmd {
	my (@args) = @_;
	my $root = $ENV{PAYFLOW_ROOT} || '.';
	my $env = $ENV{PAYFLOW_ENV} || 'test';
	return ("$root/scripts/pf-env", $env, @args);
}

# Run a command, return (exit code, combined output); never touches the
# TAP stream.
sub _capture {
	my (@cmd) = @_;
	my $pid = open(my $fh, '-|');
	croak "fork: $!" unless defined $pid;
	if ($pid == 0) {
		open STDIN, '<', '/dev/null';
		open STDERR, '>&', \*STDOUT;
		_exec(@cmd);
	}
	my $out = do { local $/; <$fh> };
	close $fh;
	return ($? >> 8, defined $out ? $out : '');
}

# pg_ctl('stop') / pg_ctl('start'): returns true on success.
sub pg_ctl {
	my ($self, $what) = @_;
	my ($rc, $out) = _capture(_pf_env_cmd("pg-$what"));
	if ($rc != 0) {
		Test::More::diag("pf-env pg-$what failed ($rc):\n$out");
		return 0;
	}
	return 1;
}

# Runs one SQL string, returns psql's stdout (-At: unaligned, tuples only)
# without the trailing newline; psql's stderr goes to the test's stderr.
sub psql {
	my ($self, $sql) = @_;
	my @cmd = _pf_env_cmd('psql', '-At', '-c', $sql);

	my $pid = open(my $fh, '-|');
	croak "fork: $!" unless defined $pid;
	if ($pid == 0) {
		open STDIN, '<', '/dev/null';
		_exec(@cmd);
	}
	my $out = do { local $/; <$fh> };
	close $fh;
	$self->{psql_status} = $? >> 8;
	$out = '' unless defined $out;
	chomp $out;
	return $out;
}

sub psql_status { $_[0]->{psql_status} }

# Starts psql in the background (e.g. to hold a lock while pg_sleep runs);
# returns its pid, to be passed to wait_pid.  Output goes to psql_bg.log.
sub psql_bg {
	my ($self, $sql) = @_;
	my @cmd = _pf_env_cmd('psql', '-At', '-v', 'ON_ERROR_STOP=1',
		'-c', $sql);
	my $log = "$self->{dir}/psql_bg.log";

	my $pid = fork;
	croak "fork: $!" unless defined $pid;
	if ($pid == 0) {
		open STDIN, '<', '/dev/null';
		open STDOUT, '>>', $log;
		open STDERR, '>&', \*STDOUT;
		_exec(@cmd);
	}

	$BG_PIDS{$pid} = $$;
	return $pid;
}

# Waits for a child; returns its exit code, or undef on timeout (default
# 60 s).
sub wait_pid {
	my ($self, $pid, $timeout) = @_;
	my $deadline = time + (defined $timeout ? $timeout : 60);
	while (1) {
		my $r = waitpid($pid, WNOHANG);
		if ($r == $pid) {
			delete $BG_PIDS{$pid};
			return $? >> 8;
		}
		if ($r == -1) {
			delete $BG_PIDS{$pid};
			return undef;
		}
		return undef if time > $deadline;
		sleep 0.05;
	}
}

# Polls $code every $interval seconds until it returns true or $timeout
# seconds have passed; returns the last value.
sub poll {
	my ($self, $timeout, $code, $interval) = @_;
	my $deadline = time + $timeout;
	while (1) {
		my $v = $code->();
		return $v if $v || time >= $deadline;
		sleep($interval || 0.2);
	}
}

###############################################################################
# HTTP helpers (exported functions)

sub _default_port {
	croak 'no PayFlow::Test object: pass port =>' unless $CURRENT;
	return $CURRENT->port(8080);
}

our $LAST_ERROR = '';

sub _connect {
	my (%opts) = @_;
	my $port = $opts{port} || _default_port();
	my $timeout = $opts{timeout} || 10;

	if ($opts{ssl}) {
		require IO::Socket::SSL;
		my %ssl = map { $_ => $opts{$_} } grep { /^SSL_/ } keys %opts;
		my $s = IO::Socket::SSL->new(
			PeerAddr => '127.0.0.1',
			PeerPort => $port,
			Proto => 'tcp',
			Timeout => $timeout,
			SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(),
			SSL_hostname => 'localhost',
			%ssl,
		);
		$LAST_ERROR = $s ? '' : IO::Socket::SSL::errstr() . " ($!)";
		return $s;
	}

	my $s = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $port,
		Proto => 'tcp',
		Timeout => $timeout,
	);
	$LAST_ERROR = $s ? '' : "connect 127.0.0.1:$port: $!";
	return $s;
}

# http($raw_request, %opts): sends the raw request, returns the raw
# response (undef if the connection could not be made).  Options: port,
# timeout (10 s), ssl => 1 (plus any SSL_* option of IO::Socket::SSL),
# start => 1 to return the socket right after sending (read the rest with
# http_end, or close it to abort), sleep => seconds to wait between sending
# the headers and the body (given as body => ...).
sub http {
	my ($request, %opts) = @_;
	my $timeout = $opts{timeout} || 10;

	my $s = _connect(%opts);
	return undef unless $s;

	my $ok = eval {
		local $SIG{ALRM} = sub { die "timeout\n" };
		local $SIG{PIPE} = 'IGNORE';
		Time::HiRes::alarm($timeout);
		_write_all($s, $request);
		if (defined $opts{body}) {
			sleep $opts{sleep} if $opts{sleep};
			_write_all($s, $opts{body});
		}
		Time::HiRes::alarm(0);
		1;
	};
	Time::HiRes::alarm(0);

	if (!$ok) {
		$LAST_ERROR = "http write: $@";
		Test::More::note($LAST_ERROR);
		# the server may have answered and closed early (e.g. 413):
		# still try to read what it said
	}

	return $s if $opts{start};
	return http_end($s, %opts);
}

sub _write_all {
	my ($s, $data) = @_;
	my $off = 0;
	while ($off < length $data) {
		my $w = $s->syswrite($data, length($data) - $off, $off);
		die "write: $!\n" unless defined $w;
		$off += $w;
	}
}

# Reads a response until the server closes the connection or timeout.
sub http_end {
	my ($s, %opts) = @_;
	my $timeout = $opts{timeout} || 10;
	my $reply = '';

	eval {
		local $SIG{ALRM} = sub { die "timeout\n" };
		local $SIG{PIPE} = 'IGNORE';
		Time::HiRes::alarm($timeout);
		while (1) {
			my $n = $s->sysread(my $buf, 65536);
			last unless $n;
			$reply .= $buf;
		}
		Time::HiRes::alarm(0);
		1;
	} or do {
		$LAST_ERROR = "http read: $@";
		Test::More::note($LAST_ERROR);
	};
	Time::HiRes::alarm(0);

	close $s;
	return $reply;
}

# Builds a request.  Options: headers => [ 'Name: value', ... ] or
# { Name => value }, body => string (sets Content-Length), proto
# ("HTTP/1.1"), host ("localhost"); others go to http().
sub _build_request {
	my ($method, $uri, %opts) = @_;
	my $proto = $opts{proto} || 'HTTP/1.1';
	my @h;

	my $hdrs = $opts{headers} || [];
	if (ref $hdrs eq 'HASH') {
		@h = map { "$_: $hdrs->{$_}" } sort keys %$hdrs;
	} else {
		@h = @$hdrs;
	}

	my $r = "$method $uri $proto\r\n";
	$r .= 'Host: ' . (defined $opts{host} ? $opts{host} : 'localhost')
		. "\r\n" unless grep { /^host:/i } @h;
	$r .= "Connection: close\r\n" unless grep { /^connection:/i } @h;
	$r .= "$_\r\n" for @h;

	if (defined $opts{body}) {
		$r .= 'Content-Length: ' . length($opts{body}) . "\r\n"
			unless grep { /^(?:content-length|transfer-encoding):/i } @h;
	}

	$r .= "\r\n";
	return $r;
}

sub http_request {
	my ($method, $uri, %opts) = @_;
	my $req = _build_request($method, $uri, %opts);
	if (defined $opts{body} && !$opts{sleep}) {
		$req .= delete $opts{body};
	}
	return http($req, %opts);
}

sub http_get {
	my ($uri, %opts) = @_;
	return http_request('GET', $uri, %opts);
}

sub _dechunk {
	my ($data) = @_;
	my $out = '';
	while ($data =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
		my $len = hex $1;
		last if $len == 0;
		$out .= substr($data, 0, $len, '');
		$data =~ s/^\r\n//;
	}
	return $out;
}

# Parses a raw response into
#   { status, headers => { lc name => value }, body, json, raw }
# json is the decoded body or undef (json_error says why).  Repeated
# headers are joined with ", ".  Always returns a hashref, with status
# undef when nothing (or no status line) was received.
sub http_parse {
	my ($raw) = @_;
	my $r = {
		status => undef,
		headers => {},
		body => undef,
		json => undef,
		raw => $raw,
	};

	return $r unless defined $raw && length $raw;

	my ($head, $body) = split /\r\n\r\n/, $raw, 2;
	my @lines = split /\r\n/, $head;
	my $status_line = shift @lines;

	return $r unless defined $status_line
		&& $status_line =~ m{^HTTP/\d\.\d (\d{3})};

	$r->{status} = $1;
	$r->{status_line} = $status_line;

	for my $l (@lines) {
		my ($n, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
		$n = lc $n;
		$r->{headers}{$n} = exists $r->{headers}{$n}
			? "$r->{headers}{$n}, $v" : $v;
	}

	$body = '' unless defined $body;
	if (($r->{headers}{'transfer-encoding'} || '') =~ /chunked/i) {
		$body = _dechunk($body);
	}
	$r->{body} = $body;

	if (length $body) {
		$r->{json} = eval { JSON::PP->new->utf8->decode($body) };
		$r->{json_error} = $@ unless defined $r->{json};
	}

	return $r;
}

# http_many($n, $uri, %opts): opens $n connections first, then sends the
# $n requests back to back, then reads all responses with IO::Select until
# every connection is closed by the server or timeout (10 s).  Options as
# http_request (method => 'GET', headers, body, port, timeout) or
# request => $raw.  Returns the $n parsed responses, in connection order;
# each also has elapsed (seconds from the burst to its end) and, if it
# did not complete, error.
sub http_many {
	my ($n, $uri, %opts) = @_;
	my $timeout = $opts{timeout} || 10;
	my $req = defined $opts{request} ? $opts{request}
		: _build_request($opts{method} || 'GET', $uri, %opts)
			. (defined $opts{body} ? $opts{body} : '');

	local $SIG{PIPE} = 'IGNORE';

	my @conn;
	for my $i (0 .. $n - 1) {
		my $s = _connect(%opts, ssl => 0);
		push @conn, { sock => $s, buf => '',
			error => $s ? undef : $LAST_ERROR };
	}

	my $start = time;

	for my $c (@conn) {
		next unless $c->{sock};
		my $w = $c->{sock}->syswrite($req);
		if (!defined $w || $w != length $req) {
			$c->{error} = "write: $!";
		}
	}

	my $sel = IO::Select->new;
	my %by_fd;
	for my $c (@conn) {
		next unless $c->{sock};
		$c->{sock}->blocking(0);
		$sel->add($c->{sock});
		$by_fd{fileno $c->{sock}} = $c;
	}

	my $deadline = $start + $timeout;
	while ($sel->count) {
		my $left = $deadline - time;
		last if $left <= 0;
		for my $s ($sel->can_read($left)) {
			my $c = $by_fd{fileno $s};
			my $got = $s->sysread(my $buf, 65536);
			if ($got) {
				$c->{buf} .= $buf;
				next;
			}
			next if !defined $got && ($!{EAGAIN} || $!{EINTR});
			$c->{error} = "read: $!" if !defined $got && !length $c->{buf};
			$c->{elapsed} = time - $start;
			$c->{done} = 1;
			$sel->remove($s);
			close $s;
		}
	}

	my @res;
	for my $c (@conn) {
		if ($c->{sock} && !$c->{done}) {
			$c->{error} ||= 'timeout';
			$c->{elapsed} = time - $start;
			close $c->{sock};
		}
		my $r = http_parse($c->{buf});
		$r->{elapsed} = $c->{elapsed};
		$r->{error} = $c->{error} if defined $c->{error};
		push @res, $r;
	}

	return @res;
}


# A JSON API call.  $auth is the whole Authorization value ("Bearer ...")
# or undef for none; a reference body is sent as JSON, a string as is.
sub api {
	my ($auth, $method, $uri, $body, %opts) = @_;
	my @h = @{delete $opts{headers} || []};

	push @h, "Authorization: $auth" if defined $auth;

	if (defined $body) {
		$body = JSON::PP->new->canonical->encode($body) if ref $body;
		push @h, 'Content-Type: application/json';
	}

	return http_parse(http_request($method, $uri, headers => \@h,
		defined $body ? (body => $body) : (), %opts));
}

# the same with an API key or token: bearer($secret, $method, $uri, $body)
sub bearer {
	my ($secret, @rest) = @_;
	return api("Bearer $secret", @rest);
}

# the same as the operator of %%ADMIN_KEY%%
sub admin_api {
	my ($self, @rest) = @_;
	return api('Bearer ' . $self->admin_secret, @rest);
}

1;
