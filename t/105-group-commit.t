#!/usr/bin/perl

# Group commit (pf_pg.c): payments that wait for a connection share one
# transaction, each with its own scope and call between one BEGIN and
# COMMIT, and if that transaction fails each runs again alone.
#
# 1. pool=1: 40 concurrent POST /v1/payments all succeed, each its own
#    payment with its key, events and balanced ledger entries, and the
#    metrics show transactions that carried several payments.
# 2. 20 concurrent requests with one Idempotency-Key: one payment, every
#    answer that payment's, byte for byte.
# 3. A fault injected into one insert of a shared transaction (a trigger
#    that fails the 10th insert it sees, once): the whole transaction is
#    undone, its payments run again alone, and all 40 succeed, none twice.
#
# Each burst starts while a lock holds the first payment's insert, so the
# others are waiting when the connection comes free.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(21);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=1 queue=512;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    server {
        listen       127.0.0.1:%%PORT_8080%% backlog=1024;
        server_name  localhost;

        location = /metrics { payflow_metrics; }
        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

$t->run;

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'group' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'developer' });
my $key = $r->{json}{data}{secret};

sub metric {
	my ($name) = @_;
	my $m = http_get('/metrics');
	return $m =~ /^\Q$name\E (\d+)$/m ? $1 : 0;
}

# n requests at once while a lock holds the first one's insert for a
# second: the others wait for the one connection, however fast nginx is
# (under ASan it is not), and share its next transactions
sub burst {
	my ($n, @headers) = @_;
	my $body = encode_json({ amount => 4200, currency => 'usd' });

	my $locker = $t->psql_bg('BEGIN; LOCK TABLE payments IN EXCLUSIVE MODE; '
		. 'SELECT pg_sleep(1); COMMIT;');
	$t->poll(5, sub { $t->psql("SELECT count(*) FROM pg_locks l "
		. "JOIN pg_class c ON c.oid = l.relation "
		. "WHERE c.relname = 'payments' AND l.mode = 'ExclusiveLock' "
		. "AND l.granted") eq '1' }, 0.05)
		or BAIL_OUT('the lock on payments was not taken');

	my @r = http_many($n, '/v1/payments', method => 'POST', body => $body,
		timeout => 30,
		headers => [ "Authorization: Bearer $key",
			'Content-Type: application/json', @headers ]);

	$t->wait_pid($locker, 15);
	return @r;
}

sub payments { $t->psql("SELECT count(*) FROM payments "
	. "WHERE tenant_id = '$tenant'") }

# every ledger transaction of the tenant nets to zero per currency
sub unbalanced { $t->psql("SELECT count(*) FROM (SELECT transaction_id "
	. "FROM ledger_entries WHERE tenant_id = '$tenant' "
	. "GROUP BY transaction_id, currency HAVING sum(CASE direction "
	. "WHEN 'debit' THEN amount ELSE -amount END) <> 0) u") }

###############################################################################
# 1. 40 at once through one connection

my $groups = metric('payflow_pg_group_commits_total');
my $members = metric('payflow_pg_group_members_total');
my $merged = metric('payflow_pg_group_merged_total');

my @r = burst(40);
my @ok = grep { ($_->{status} // 0) == 200
	&& ($_->{json}{data}{status} // '') eq 'succeeded' } @r;
is(scalar @ok, 40, '40 concurrent payments: all succeeded');

my %ids = map { $_->{json}{data}{id} => 1 } @ok;
is(scalar keys %ids, 40, 'each its own payment');
is(payments(), 40, 'and 40 written');
is($t->psql("SELECT count(*) FROM ledger_entries "
	. "WHERE tenant_id = '$tenant'"), 80, 'two ledger entries each');
is($t->psql("SELECT count(*) FROM payment_events "
	. "WHERE tenant_id = '$tenant'"), 120, 'three events each');
is(unbalanced(), 0, 'every ledger transaction balances');

cmp_ok(metric('payflow_pg_group_commits_total'), '>', $groups,
	'some transactions carried several payments');
cmp_ok(metric('payflow_pg_group_members_total') - $members, '>=', 2,
	'with their members counted');
cmp_ok(metric('payflow_pg_group_merged_total'), '>', $merged,
	'written by one statement for the group');

# each payment's answer and events are its own request's
is(scalar(grep { ($_->{json}{meta}{request_id} // '')
	eq ($_->{headers}{'x-request-id'} // '-') } @ok), 40,
	'each answer carries its own request id');
is($t->psql("SELECT count(DISTINCT request_id) FROM payment_events "
	. "WHERE tenant_id = '$tenant' AND source = 'api'"), 40,
	'each payment\'s events carry its request\'s id');
is($t->psql("SELECT count(*) FROM payments p JOIN payment_events e "
	. "ON e.payment_id = p.id WHERE p.tenant_id = '$tenant' "
	. "AND e.type = 'payment.succeeded' "
	. "AND (e.data->>'id') = p.id AND (e.data->>'amount')::int = p.amount"),
	40, 'and its own snapshot');

###############################################################################
# 2. one key, 20 requests at once

my $idem = 'group-' . time;
@r = burst(20, "Idempotency-Key: $idem");

is(scalar(grep { ($_->{status} // 0) == 200 } @r), 20,
	'one key, 20 requests: all answered 200');
my %bodies = map { ($_->{body} // '') => 1 } @r;
is(scalar keys %bodies, 1, 'all with the same answer, byte for byte');
is($t->psql("SELECT count(*) FROM idempotency_keys "
	. "WHERE tenant_id = '$tenant' AND key = '$idem'"), 1, 'one key');
is(payments(), 41, 'and one payment for it');

###############################################################################
# 3. a shared transaction fails: its payments run again alone

$t->psql(<<'SQL');
CREATE SEQUENCE test_group_fault;
GRANT USAGE ON SEQUENCE test_group_fault TO PUBLIC;
CREATE FUNCTION test_group_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('test_group_fault') = 10 THEN
        RAISE EXCEPTION 'fault injected by t/105';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER test_group_fault BEFORE INSERT ON payments
    FOR EACH ROW EXECUTE FUNCTION test_group_fault();
SQL

my $retries = metric('payflow_pg_group_retries_total');

@r = burst(40);

$t->psql('DROP TRIGGER test_group_fault ON payments; '
	. 'DROP FUNCTION test_group_fault(); DROP SEQUENCE test_group_fault;');

@ok = grep { ($_->{status} // 0) == 200
	&& ($_->{json}{data}{status} // '') eq 'succeeded' } @r;
is(scalar @ok, 40, 'a fault in a shared transaction: all 40 succeeded')
	or diag(join ' ', map { $_->{status} // 'none' } @r);
cmp_ok(metric('payflow_pg_group_retries_total'), '>', $retries,
	'the transaction\'s payments ran again alone');
is(payments(), 81, 'each written once');
is(unbalanced(), 0, 'the ledger balances');

$t->stop;

unlike($t->read_file('error.log'), qr/\[(?:alert|crit|emerg)\]/,
	'no alert in error.log');
