#!/usr/bin/perl

# The connection pool under load and under a stuck database.
#
# 1. pool=2 queue=512: 200 concurrent /readyz all get 200 with valid JSON,
#    each with its own request id, over no more than 2 PostgreSQL
#    connections.
# 2. pool=1 queue=1 queue_timeout=1s while a lock makes the one
#    connection's query wait: the burst is shed quickly with 503
#    database_busy instead of piling up, and the pool works again as soon
#    as the lock is released.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(21);

sub conf {
	my ($db_params) = @_;
	return <<"EOF";

%%TEST_GLOBALS%%

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               $db_params;

    server {
        listen       127.0.0.1:%%PORT_8080%% backlog=1024;
        server_name  localhost;

        location = /readyz  { payflow_ready; }
    }
}

EOF
}

# PostgreSQL backends opened by nginx (the user's connections other than
# the psql asking)
sub nginx_backends {
	return $t->psql("SELECT count(*) FROM pg_stat_activity "
		. "WHERE usename = '$ENV{PAYFLOW_PG_USER}' "
		. "AND backend_type = 'client backend' "
		. "AND pid <> pg_backend_pid() "
		. "AND application_name NOT LIKE 'psql%'");
}

sub readyz { http_parse(http_get('/readyz')) }

###############################################################################
# 1. 200 concurrent requests through a pool of 2

$t->write_file_expand('nginx.conf', conf('pool=2 queue=512'));
$t->run;

is(readyz()->{status}, 200, 'pool=2: readyz 200');

my @r = http_many(200, '/readyz', timeout => 30);

my @ok = grep {
	($_->{status} // 0) == 200
	&& ref $_->{json} eq 'HASH'
	&& $_->{json}{success}
	&& ($_->{json}{data}{status} // '') eq 'ready'
} @r;
is(scalar @ok, 200, '200 concurrent readyz: all 200 with valid JSON')
	or diag_statuses(@r);

my %ids = map { ($_->{headers}{'x-request-id'} // '') => 1 } @ok;
is(scalar keys %ids, 200, '200 distinct request ids');

my $n = nginx_backends();
ok($n >= 1 && $n <= 2, "pool=2 respected: $n PostgreSQL connection(s)");

ok($t->no_worker_crash, 'no worker crash after the burst');
$t->stop;

###############################################################################
# 2. pool=1, queue=1, queue_timeout=1s with the connection stuck on a lock

$t->write_file_expand('nginx.conf',
	conf('pool=1 queue=1 queue_timeout=1s query_timeout=10s'));
$t->run;

# the single connection is open and idle before the lock is taken
is(readyz()->{status}, 200, 'pool=1: readyz 200 before the lock');

my $locker = $t->psql_bg('BEGIN; '
	. 'LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE; '
	. 'SELECT pg_sleep(3); COMMIT;');

ok($t->poll(5, \&lock_granted, 0.05), 'lock on schema_migrations held');

# 5 at once: one runs (and waits for the lock), one queues and times out
# after 1 s, the other three find the queue full
@r = http_many(5, '/readyz', timeout => 10);

my @busy = grep {
	($_->{status} // 0) == 503
	&& ($_->{json}{error}{code} // '') eq 'database_busy'
} @r;
is(scalar @busy, 4, 'burst of 5: 4 database_busy') or diag_statuses(@r);

# three find the queue full and are refused at once; the queued one is
# refused when queue_timeout=1s expires, not when the lock goes (3 s)
my @at_once = grep { $_->{elapsed} < 0.5 } @busy;
my @queued = grep { $_->{elapsed} >= 0.9 && $_->{elapsed} < 1.8 } @busy;
is(scalar @at_once, 3, 'queue full: 3 refused at once');
is(scalar @queued, 1, sprintf('queued request refused after queue_timeout '
	. '(%s s)', join ',', map { sprintf '%.2f', $_->{elapsed} } @busy));

is(scalar(grep { !defined $_->{status} } @r), 0,
	'burst of 5: every request answered');
is(scalar(grep { ($_->{status} // 0) !~ /^(?:200|503)$/ } @r), 0,
	'burst of 5: only 200 or 503');
is(scalar(grep { ($_->{headers}{'retry-after'} // '') !~ /^\d+$/ } @busy),
	0, 'database_busy responses carry Retry-After');
is(scalar(grep { ($_->{json}{error}{type} // '') ne 'api_error' } @busy),
	0, 'database_busy responses have error.type api_error');
is(scalar(grep { ($_->{headers}{'content-type'} // '')
	!~ m{^application/json\b} } @busy), 0,
	'database_busy responses are application/json');

# the one request that held the connection completes once the lock goes
is(scalar(grep { ($_->{status} // 0) == 200 } @r), 1,
	'the query waiting for the lock finished with 200');

is($t->wait_pid($locker, 15), 0, 'lock holder finished');

ok(!lock_granted(), 'lock released');

my @st = map { readyz()->{status} // 0 } 1 .. 3;
is("@st", '200 200 200', 'after the lock: readyz 200 again');

is(nginx_backends(), 1, 'pool=1 respected: 1 PostgreSQL connection');

ok($t->no_worker_crash, 'no worker crash');

###############################################################################

sub lock_granted {
	return $t->psql("SELECT count(*) FROM pg_locks l "
		. "JOIN pg_class c ON c.oid = l.relation "
		. "WHERE c.relname = 'schema_migrations' "
		. "AND l.mode = 'AccessExclusiveLock' AND l.granted") eq '1';
}

sub diag_statuses {
	my %h;
	for (@_) {
		my $k = ($_->{status} // 'none') . ' '
			. ($_->{json} ? ($_->{json}{error}{code} // 'ok')
				: 'no-json') . ($_->{error} ? " ($_->{error})" : '');
		$h{$k}++;
	}
	diag(join "\n", map { "$h{$_} x $_" } sort keys %h);
}

###############################################################################
