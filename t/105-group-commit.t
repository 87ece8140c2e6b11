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
# 4. group_wait=100ms, pool=2: with both connections free a payment runs
#    at once; with one held by a payment waiting on a lock, the next one
#    waits 100 ms for others to join it on the free one, not for the lock.
#
# Each burst starts while a lock holds the first payment's insert, so the
# others are waiting when the connection comes free.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Time::HiRes;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(35);

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
my $BODY = encode_json({ amount => 4200, currency => 'usd' });

# a lock on payments for a second, taken before it returns: payments made
# meanwhile wait for their connection, whatever nginx's speed
sub lock_payments {
	my $pid = $t->psql_bg('BEGIN; LOCK TABLE payments IN EXCLUSIVE MODE; '
		. 'SELECT pg_sleep(1); COMMIT;');
	$t->poll(5, sub { $t->psql("SELECT count(*) FROM pg_locks l "
		. "JOIN pg_class c ON c.oid = l.relation "
		. "WHERE c.relname = 'payments' AND l.mode = 'ExclusiveLock' "
		. "AND l.granted") eq '1' }, 0.05)
		or BAIL_OUT('the lock on payments was not taken');
	return $pid;
}

sub burst {
	my ($n, @headers) = @_;
	my $body = $BODY;

	my $locker = lock_payments();

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

# every field of a payment written by the group's statement as by the
# call of a payment alone
$BODY = encode_json({ amount => 1234500, currency => 'eur',
	description => "group \"quoted\" \\ \x{e9}t\x{e9}\ttab",
	capture_method => 'manual',
	metadata => { order => '42', note => "line\nbreak" },
	customer => { email => 'g@example.com', name => 'Group', id => 'c-1' },
	return_url => 'https://shop.example/done?a=1&b=2' });
my $alone = api("Bearer $key", 'POST', '/v1/payments', $BODY)->{json}{data};
my @many = grep { ($_->{status} // 0) == 200 } burst(8);
is(scalar @many, 8, 'a burst of full payments: all 200');

my $fields = sub {
	my ($id) = @_;
	# the sandbox's reference is the payment's own id
	$t->psql("SELECT p - 'id' - 'created' - 'provider_reference' "
		. "|| jsonb_build_object('own', p->>'provider_reference' = id) "
		. "FROM (SELECT payflow_payment_json(p) AS p, id FROM payments p "
		. "WHERE id = '$id') x") . ' | ' . $t->psql("SELECT "
		. "string_agg(type || ' ' || coalesce(from_status, '-') || ' ' "
		. "|| to_status || ' ' || source || ' ' || ((data - 'id' "
		. "- 'created' - 'provider_reference')::text), ', ' "
		. "ORDER BY created_at) "
		. "FROM payment_events WHERE payment_id = '$id'");
};
my $want = $fields->($alone->{id});
is(scalar(grep { $fields->($_->{json}{data}{id}) eq $want } @many), 8,
	'each stored as the same payment alone is, with the same events')
	or diag($want, "\n", $fields->($many[0]{json}{data}{id}));
is(scalar(grep { my $d = $_->{json}{data};
	$d->{description} eq $alone->{description}
	&& $d->{metadata}{note} eq "line\nbreak"
	&& $d->{status} eq 'requires_capture' } @many), 8,
	'and answered with its fields as sent');
$BODY = encode_json({ amount => 4200, currency => 'usd' });

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
is(payments(), 50, 'and one payment for it');

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
is(payments(), 90, 'each written once');
is(unbalanced(), 0, 'the ledger balances');

###############################################################################
# 4. group_wait: under load, a payment that finds a free connection waits
#    for others to join it; with nothing busy it runs at once

$t->stop;
my $conf = $t->read_file('nginx.conf');
# no background job may free a connection meanwhile: a connection that
# comes free takes what waits at once, which would end the wait early
$conf =~ s/pool=1 queue=512;/pool=2 queue=512 group_wait=100ms;
    payflow_jobs_interval 1h;
    payflow_ledger_seal_interval 1h;/
	or BAIL_OUT('nginx.conf has no pool=1');
$t->write_file('nginx.conf', $conf);
$t->run;

sub post_timed {
	my $t0 = Time::HiRes::time();
	my $r = api("Bearer $key", 'POST', '/v1/payments',
		{ amount => 4200, currency => 'usd' });
	return ($r, Time::HiRes::time() - $t0);
}

# nothing busy: at once
my ($one, $idle) = post_timed();
is($one->{status}, 200, 'group_wait, idle pool: the payment succeeded');

# one connection held: a payment whose key another transaction is
# inserting waits for that transaction on it
my $hold = 'hold-' . time;
my $holder = $t->psql_bg("BEGIN; INSERT INTO idempotency_keys (tenant_id, "
	. "livemode, key, fingerprint, method, path, phase) VALUES "
	. "('$tenant', false, '$hold', decode(repeat('00', 32), 'hex'), "
	. "'POST', '/v1/payments', 'started'); SELECT pg_sleep(2); ROLLBACK;");
$t->poll(5, sub { $t->psql("SELECT count(*) FROM pg_stat_activity "
	. "WHERE query LIKE 'BEGIN; INSERT INTO idempotency_keys%' "
	. "AND wait_event = 'PgSleep'") eq '1' }, 0.05)
	or BAIL_OUT('the key was not held');

my $body = encode_json({ amount => 4200, currency => 'usd' });
my $held = http("POST /v1/payments HTTP/1.1\r\nHost: localhost\r\n"
	. "Authorization: Bearer $key\r\nContent-Type: application/json\r\n"
	. "Idempotency-Key: $hold\r\nContent-Length: " . length($body)
	. "\r\nConnection: close\r\n\r\n$body", start => 1);
$t->poll(5, sub { $t->psql("SELECT count(*) FROM pg_stat_activity "
	. "WHERE wait_event_type = 'Lock' AND usename = 'payflow_app'")
	eq '1' }, 0.05)
	or BAIL_OUT('the held payment did not wait');

# a background query (a cache's refresh) that frees the connection ends
# the wait early, as it should: an attempt counts when the payment was
# the worker's only query meanwhile
my ($two, $busy, $clean);
my $ok_queries = 'payflow_pg_queries_total{outcome="ok"}';
for (1 .. 5) {
	my $q0 = metric($ok_queries);
	($two, $busy) = post_timed();
	$clean = (metric($ok_queries) - $q0 == 1) and last;
}
is($two->{status}, 200, 'group_wait, one connection busy: succeeded');
ok($clean, 'with no other query meanwhile');
cmp_ok($busy, '>=', 0.1, 'after waiting group_wait (100 ms) for others')
	or diag("took $busy s");
cmp_ok($busy, '<', 1.5, 'not for the busy connection') or diag("$busy s");

http_end($held, timeout => 10);
$t->wait_pid($holder, 15);

###############################################################################
# 5. the risk engine's decisions, each payment's own, in one group

$t->stop;
$conf = $t->read_file('nginx.conf');
$conf =~ s/(payflow_key_pepper)/payflow_risk zone=risk:1m list_cache=64k list_refresh=200ms;\n    $1/
	or BAIL_OUT('nginx.conf has no payflow_key_pepper');
$t->write_file('nginx.conf', $conf);
$t->run;

$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'owner' });
my $owner = $r->{json}{data}{secret};
is(bearer($owner, 'POST', '/v1/risk/lists/email',
	{ value => 'bad@fraud.example' })->{status}, 200, 'an email blocked');
sleep 1;    # list_refresh: the worker's copy has it

$merged = metric('payflow_pg_group_merged_total');
$retries = metric('payflow_pg_group_retries_total');
my $locker = lock_payments();
my @socks = map {
	my $email = $_ % 3 ? "good$_\@shop.example" : 'bad@fraud.example';
	my $b = encode_json({ amount => 4200, currency => 'usd',
		customer => { email => $email } });
	http("POST /v1/payments HTTP/1.1\r\nHost: localhost\r\n"
		. "Authorization: Bearer $key\r\n"
		. "Content-Type: application/json\r\nContent-Length: "
		. length($b) . "\r\nConnection: close\r\n\r\n$b", start => 1)
} 0 .. 8;
my @risky = map { http_parse(http_end($_, timeout => 30)) } @socks;
$t->wait_pid($locker, 15);

cmp_ok(metric('payflow_pg_group_merged_total'), '>', $merged,
	'risk: the payments shared a statement');
is(metric('payflow_pg_group_retries_total'), $retries,
	'which none of them failed');
is(join(' ', map { $_->{status} // 'none' } @risky),
	'402 200 200 402 200 200 402 200 200',
	'each its own decision: the blocked email 402, the others 200');
is(scalar(grep { ($_->{json}{error}{payment}{failure_code} // '')
	eq 'blocked' } @risky), 3, 'the blocked ones failed as blocked');
is(scalar(grep { ($_->{json}{data}{risk}{decision} // '') eq 'allow'
	&& $_->{json}{data}{status} eq 'succeeded' } @risky), 6,
	'the others allowed and charged');

$t->stop;

unlike($t->read_file('error.log'), qr/\[(?:alert|crit|emerg)\]/,
	'no alert in error.log');
