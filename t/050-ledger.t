#!/usr/bin/perl

# The money invariants PostgreSQL enforces by itself, whatever the C code
# does, tested as the application role nginx uses: the payment state
# machine; amounts that only grow within bounds; payments created only by
# payflow_payment_create, events and ledger entries written by the owner's
# code in the same transaction; refunds that cannot exceed the captured
# amount, even concurrently; a ledger that balances, is append-only, and
# whose hash chain, sealed off the request path by payflow_ledger_seal,
# detects tampering and names the entry.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_pg->plan(36);

my $A = 'ten_' . ('A' x 20) . sprintf('%04d', $$ % 10000);
my $B = 'ten_' . ('B' x 20) . sprintf('%04d', $$ % 10000);

$t->psql("INSERT INTO tenants (id, name) VALUES ('$A', 'a'), ('$B', 'b')");

# psql as payflow_app inside one transaction scoped to a tenant; returns
# (exit code, output), errors with their SQLSTATE
sub app {
	my ($tenant, $sql) = @_;
	local $ENV{PGPASSWORD} = do {
		open my $fh, '<', $ENV{PAYFLOW_PG_PASSWORD_FILE} or die;
		local $/; my $p = <$fh>; $p =~ s/\s+\z//; $p };
	my $file = "$t->{dir}/q$$-" . int(rand 1e9) . '.sql';
	open my $fh, '>', $file or die;
	print $fh "\\set VERBOSITY sqlstate\nBEGIN;\n"
		. "SELECT set_config('payflow.tenant_id', '$tenant', true), "
		. "set_config('payflow.livemode', 'off', true) \\g /dev/null\n"
		. "$sql\nCOMMIT;\n";
	close $fh;
	my $out = `psql -X -q -At -v ON_ERROR_STOP=1 -h $ENV{PAYFLOW_PG_HOST} \\
		-p $ENV{PAYFLOW_PG_PORT} -U $ENV{PAYFLOW_PG_USER} \\
		-d $ENV{PAYFLOW_PG_DB} -f $file 2>&1`;
	return ($? >> 8, $out);
}

my $n = 0;
sub id { sprintf '%s_%024d', shift, ++$n + ($$ % 1000) * 1000 }

# payflow_payment_create as the C code calls it, without a key
sub create {
	my ($id, $amount, $status) = @_;
	return "SELECT mine FROM payflow_payment_create('$id', $amount, 'USD', "
		. "'automatic', 'sandbox', NULL, NULL, NULL, NULL, NULL, NULL, "
		. "'$status', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
		. "NULL, NULL) \\g /dev/null\n";
}

sub payment {
	my ($amount) = @_;
	my $id = id('pay');
	my ($rc, $out) = app($A, create($id, $amount, 'succeeded'));
	die "payment: $out" if $rc;
	return $id;
}

sub refund {
	my ($pay, $amount, %o) = @_;
	my $id = id('re');
	return app($A, "INSERT INTO refunds (id, tenant_id, livemode, "
		. "payment_id, amount, currency) VALUES ('$id', '$A', false, "
		. "'$pay', $amount, 'USD');"
		. ($o{sleep} ? "SELECT pg_sleep($o{sleep}) \\g /dev/null\n" : '')
		. "UPDATE refunds SET status = 'succeeded' WHERE id = '$id';");
}

# the sequencer's work, as the workers' timers do it; other test files'
# transactions may hold the horizon back for a moment
sub seal {
	for (1 .. 100) {
		my (undef, $out) = app($A, "SELECT sealed FROM "
			. "payflow_ledger_seal(1000) \\g /dev/null\n"
			. "SELECT unsealed FROM payflow_ledger_verify('$A', false);");
		return 1 if $out =~ /^0$/m;
		sleep 0.1;
	}
	return 0;
}

sub verify {
	seal();
	my (undef, $out) = app($A, "SELECT entries, coalesce(broken_seq, 0) "
		. "FROM payflow_ledger_verify('$A', false);");
	chomp $out;
	return $out;
}

sub balanced {
	my (undef, $out) = app($A, "SELECT count(*) FROM (SELECT currency, "
		. "sum(CASE direction WHEN 'debit' THEN amount ELSE -amount END) s "
		. "FROM ledger_entries GROUP BY currency) x WHERE s <> 0;");
	return $out =~ /^0$/m;
}

###############################################################################
# a payment's life: events and ledger rows come from the database

my $p = payment(1000);
my ($rc, $out) = refund($p, 400);
is($rc, 0, 'a partial refund succeeds') or diag($out);

(undef, $out) = app($A, "SELECT status, amount_refunded FROM payments "
	. "WHERE id = '$p';");
is($out, "partially_refunded|400\n", 'the payment is partially refunded');

(undef, $out) = app($A, "SELECT string_agg(type, ' ' ORDER BY created_at) "
	. "FROM payment_events WHERE payment_id = '$p';");
is($out, "payment.created payment.processing payment.succeeded "
	. "refund.created refund.succeeded payment.partially_refunded\n",
	'every transition appended its event');

(undef, $out) = app($A, "SELECT count(*) FILTER (WHERE id !~ "
	. "'^evt_[0-9A-Za-z]{24}\$'), count(DISTINCT id) FROM payment_events "
	. "WHERE payment_id = '$p'; SELECT count(*) FILTER (WHERE id !~ "
	. "'^le_[0-9A-Za-z]{24}\$' OR transaction_id !~ "
	. "'^ltx_[0-9A-Za-z]{24}\$') FROM ledger_entries "
	. "WHERE payment_id = '$p';");
is($out, "0|6\n0\n", 'event and ledger ids: prefix and 24 base62 '
	. 'characters, all different');

# created processing (a network provider is called next): the log still
# shows both steps
my $q = id('pay');
($rc, $out) = app($A, create($q, 7, 'processing') . "SELECT "
	. "string_agg(type || ' ' || coalesce(from_status, '-') || ' ' "
	. "|| to_status, ', ' ORDER BY created_at) FROM payment_events "
	. "WHERE payment_id = '$q';");
is($out, "payment.created - pending, payment.processing pending "
	. "processing\n", 'a payment created processing logs created, then '
	. 'processing') or diag($out);
($rc, $out) = app($A, create(id('pay'), 7, 'refunded'));
like($out, qr/PF001/, 'a payment cannot be created refunded (PF001)');
($rc, $out) = app($A, "INSERT INTO payments (id, tenant_id, livemode, "
	. "amount, currency, provider, status) VALUES ('" . id('pay')
	. "', '$A', false, 7, 'USD', 'sandbox', 'processing');");
like($out, qr/42501/, 'the app role cannot insert a payment itself');
($rc, $out) = app($A, "SELECT p.status || ' ' || count(e.*) FROM payments p "
	. "JOIN payment_events e ON e.payment_id = p.id WHERE p.id = '$p' "
	. "GROUP BY p.status; SELECT data->>'status' FROM payment_events "
	. "WHERE payment_id = '$p' ORDER BY created_at LIMIT 3;");
like($out, qr/^partially_refunded 6\nprocessing\nprocessing\nsucceeded\n/,
	'each event of a new payment holds the payment as it was then')
	or diag($out);

(undef, $out) = app($A, "SELECT string_agg(account || ' ' || direction "
	. "|| ' ' || amount, ', ' ORDER BY txid, direction DESC) "
	. "FROM ledger_entries WHERE payment_id = '$p';");
is($out, 'provider:sandbox:clearing debit 1000, merchant:payable credit '
	. '1000, merchant:payable debit 400, provider:sandbox:clearing credit '
	. "400\n", 'capture and refund posted as balanced pairs');

is(verify(), '4|0', 'the hash chain verifies');

###############################################################################
# the state machine and the amounts

my $q = payment(500);

($rc, $out) = app($A, "UPDATE payments SET status = 'processing' "
	. "WHERE id = '$q';");
like($out, qr/PF001/, 'succeeded -> processing refused (PF001)');

my $r = id('pay');
($rc, $out) = app($A, create($r, 300, 'processing')
	. "UPDATE payments SET status = 'pending' WHERE id = '$r';");
like($out, qr/PF001/, 'processing -> pending refused (PF001)');

($rc, $out) = app($A, "UPDATE payments SET amount_captured = 600 "
	. "WHERE id = '$q';");
like($out, qr/23514/, 'capturing more than the amount refused');

($rc, $out) = app($A, "UPDATE payments SET amount_captured = 400, "
	. "status = 'succeeded' WHERE id = '$q';");
like($out, qr/PF003/, 'a captured amount cannot shrink (PF003)');

($rc, $out) = app($A, "UPDATE payments SET amount = 1 WHERE id = '$q';");
like($out, qr/42501/, 'the app role cannot even try to change the amount');

###############################################################################
# refunds never exceed what was captured

($rc, $out) = refund($p, 601);
like($out, qr/PF002/, 'refunding more than remains refused (PF002)');

($rc, $out) = refund($p, 600);
is($rc, 0, 'the exact remainder can be refunded') or diag($out);

(undef, $out) = app($A, "SELECT status FROM payments WHERE id = '$p';");
is($out, "refunded\n", 'then the payment is refunded');

($rc, $out) = refund($p, 1);
like($out, qr/PF00[25]/, 'nothing more can be refunded');

# two refunds of 600 of one 1000 payment at the same time
my $c = payment(1000);
my $pid = fork // die;
if ($pid == 0) {
	my ($rc) = refund($c, 600, sleep => 1);
	exit $rc;
}
sleep 0.3;
my ($rc2, $out2) = refund($c, 600);
waitpid $pid, 0;
my $rc1 = $? >> 8;

is(($rc1 == 0) + ($rc2 == 0), 1, 'concurrent refunds: exactly one of two');
like($out2, qr/PF002/, 'the second waited for the first and was refused');

(undef, $out) = app($A, "SELECT amount_refunded FROM payments "
	. "WHERE id = '$c';");
is($out, "600\n", 'the payment shows one refund');

###############################################################################
# the ledger is append-only and balanced

($rc, $out) = app($A, "UPDATE ledger_entries SET amount = 1;");
like($out, qr/42501/, 'the app role cannot update ledger entries');

($rc, $out) = app($A, "DELETE FROM payment_events;");
like($out, qr/42501/, 'nor delete events');

($rc, $out) = app($A, "SELECT * FROM ledger_heads;");
like($out, qr/42501/, 'nor read the chain heads');

($rc, $out) = app($A, "INSERT INTO ledger_transactions (id, tenant_id, "
	. "livemode, description) VALUES ('ltx_x', '$A', false, 'x');");
like($out, qr/42501/, 'the app role cannot write the ledger at all');

($rc, $out) = app($A, "SELECT payflow_ledger_post('$A', false, NULL, NULL, "
	. "'x', 'merchant:payable', 'merchant:payable', 'USD', 5);");
like($out, qr/42501/, 'nor post through the owner\'s function');

$out = $t->psql("BEGIN; INSERT INTO ledger_transactions (id, tenant_id, "
	. "livemode, description) VALUES ('ltx_x', '$A', false, 'x'); "
	. "INSERT INTO ledger_entries (tenant_id, livemode, transaction_id, "
	. "account, currency, amount, direction) VALUES ('$A', false, "
	. "'ltx_x', 'merchant:payable', 'USD', 5, 'debit'); COMMIT;");
isnt($t->psql_status, 0, 'an unbalanced transaction fails at commit, '
	. 'even the superuser\'s');
is($t->psql("SELECT count(*) FROM ledger_transactions WHERE id = 'ltx_x'"),
	'0', 'and leaves nothing behind');

###############################################################################
# a random workload leaves the ledger balanced and the chain valid

for my $i (1 .. 40) {
	my $amount = 100 + int rand 900;
	my $pay = payment($amount);
	my $left = $amount;
	while ($left > 0 && rand() < 0.6) {
		my $part = 1 + int rand $left;
		refund($pay, $part);
		$left -= $part;
	}
}

ok(balanced(), 'after a random workload every currency nets to zero');
like(verify(), qr/^\d+\|0$/, 'and the chain verifies');

###############################################################################
# tenant isolation and tampering

(undef, $out) = app($B, "SELECT (SELECT count(*) FROM payments) + "
	. "(SELECT count(*) FROM ledger_entries) + "
	. "(SELECT count(*) FROM payment_events);");
is($out, "0\n", 'another tenant sees none of it');

ok(seal(), 'every entry is sealed');
my $third = $t->psql("SELECT entry_id FROM ledger_seals "
	. "WHERE tenant_id = '$A' AND NOT livemode AND seq = 3");
$t->psql("ALTER TABLE ledger_entries DISABLE TRIGGER "
	. "ledger_entries_append_only; UPDATE ledger_entries SET amount = "
	. "amount + 1 WHERE id = '$third'; ALTER TABLE "
	. "ledger_entries ENABLE TRIGGER ledger_entries_append_only;");

is(verify() =~ /\|(\d+)$/ ? $1 : -1, 3,
	'an entry changed behind the database\'s back is found (seq 3)');
is($t->psql("SELECT broken_entry || ' ' || problem FROM "
	. "payflow_ledger_verify('$A', false)"),
	"$third the entry is not what was sealed",
	'payflow_ledger_verify names the entry and what is wrong');

###############################################################################
# idempotency key phases only move forward

($rc, $out) = app($A, "INSERT INTO idempotency_keys (tenant_id, livemode, "
	. "key, fingerprint, method, path, phase) VALUES ('$A', false, 'k1', "
	. "sha256('x'), 'POST', '/v1/payments', 'provider_called'); "
	. "UPDATE idempotency_keys SET phase = 'started' WHERE key = 'k1';");
like($out, qr/PF006/, 'an idempotency key cannot go back a phase (PF006)');

###############################################################################
