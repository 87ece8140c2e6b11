#!/usr/bin/perl

# A client that goes away while its query is still running must not break
# the pool: with a single pooled connection, a /readyz whose query waits
# on a lock is abandoned by the client after 0.5 s; once the query
# finishes, the connection is drained and reused (same PostgreSQL
# backend), and /readyz works again.  The worker does not crash.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(11);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=1 queue=8 query_timeout=10s;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location = /readyz  { payflow_ready; }
    }
}

EOF

$t->run;

sub readyz { http_parse(http_get('/readyz')) }

# pids of the PostgreSQL backends that nginx holds
sub nginx_backend_pids {
	return $t->psql("SELECT string_agg(pid::text, ',' ORDER BY pid) "
		. "FROM pg_stat_activity "
		. "WHERE usename = '$ENV{PAYFLOW_PG_USER}' "
		. "AND backend_type = 'client backend' "
		. "AND pid <> pg_backend_pid() "
		. "AND application_name NOT LIKE 'psql%'");
}

sub lock_granted {
	return $t->psql("SELECT count(*) FROM pg_locks l "
		. "JOIN pg_class c ON c.oid = l.relation "
		. "WHERE c.relname = 'schema_migrations' "
		. "AND l.mode = 'AccessExclusiveLock' AND l.granted") eq '1';
}

###############################################################################

is(readyz()->{status}, 200, 'readyz 200 before the abort');
my $backend = nginx_backend_pids();
like($backend, qr/^\d+$/, "one pooled PostgreSQL connection (pid $backend)");

my $locker = $t->psql_bg('BEGIN; '
	. 'LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE; '
	. 'SELECT pg_sleep(2); COMMIT;');
ok($t->poll(5, \&lock_granted, 0.05), 'lock on schema_migrations held');

# the query of this request now waits on the lock; the client gives up
my $s = http_get('/readyz', start => 1);
ok($s, 'request sent');
sleep 0.5;
close $s;

is($t->wait_pid($locker, 15), 0, 'lock holder finished');

# the abandoned query completes now; give the module a moment to drain it
my $after = $t->poll(3, sub { (readyz()->{status} // 0) == 200 }, 0.1);
ok($after, 'readyz 200 after the abort');

my @st = map { readyz()->{status} // 0 } 1 .. 5;
is("@st", '200 200 200 200 200', 'five more readyz are 200: pool usable');

is(nginx_backend_pids(), $backend,
	'the same PostgreSQL connection is reused (drained, not replaced)');

ok($t->no_worker_crash, 'no worker crash');

$t->stop;

ok($t->no_worker_crash, 'no worker crash at shutdown');
is(scalar(grep { /open socket|leak/ } $t->alert_lines), 0,
	'no leaked connection reported at shutdown')
	or diag(join "\n", $t->alert_lines);

###############################################################################
