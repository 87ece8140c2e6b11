#!/usr/bin/perl

# A seeded random workload of 400 operations through the API, checked
# against a model kept here: creates (automatic and manual capture, usd,
# eur, zero-decimal jpy and three-decimal kwd, and the sandbox's failing
# amounts), partial and full captures, cancels, partial and full refunds,
# some with Idempotency-Keys and retries, some sent at once on one payment
# (refunds that race, a capture racing a cancel, one key sent three times
# at once), and attempts on another tenant's payments, over three tenants.
# Every answer is the model's; in the end every payment reads back as the
# model says, refunds never exceed what was captured, no operation was
# applied twice, and each tenant's ledger balances per currency, holds
# what was captured less what was refunded, and its hash chain verifies.
# (Tampering with the ledger is t/050's.)
#
# The seed is printed; PAYFLOW_SEED=<seed> replays the same workload (up
# to which of the requests sent at once wins).

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(15);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=4 queue=256;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

my $seed = $ENV{PAYFLOW_SEED} // int(rand 2**31);
srand($seed);
diag("seed $seed (PAYFLOW_SEED=$seed replays this workload)");

$t->run;

my @tenants;
for my $name (qw/alpha beta gamma/) {
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => $name });
	my $id = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$id/api_keys",
		{ role => 'developer' });
	push @tenants, { id => $id, key => $r->{json}{data}{secret},
		pays => [] };
}

###############################################################################
# the model and the checks of each answer

my $json = JSON::PP->new->canonical;
my (%model, @miss, %seen, $op);

sub miss { push @miss, "op $op: " . join ' ', @_ }

sub pick { $_[int rand @_] }

sub answer {
	my $r = shift;
	return ($r->{status} // 'none') . ' ' . ($r->{json}{success}
		? $r->{json}{data}{status} // '-'
		: $r->{json}{error}{code} // '-');
}

# a request sent, its socket returned, so that several run at once
sub start {
	my ($tn, $method, $uri, $body, @h) = @_;
	push @h, "Authorization: Bearer $tn->{key}";
	push @h, 'Content-Type: application/json' if defined $body;
	return http_request($method, $uri, headers => \@h, start => 1,
		timeout => 20, defined $body ? (body => $body) : ());
}

sub finish { http_parse(http_end(shift, timeout => 20)) }

sub call { finish(start(@_)) }

sub body { $json->encode(shift) }

# a random amount; the sandbox looks at its last two digits
sub amount {
	my ($tail) = @_;
	my $a = 100 * (1 + int rand 2000);
	return $a + $tail if defined $tail;
	my $d;
	do { $d = int rand 100 } while grep { $d == $_ } 2, 5, 8, 9;
	return $a + $d;
}

# what the model says a payment looks like, as the API shows it
sub view {
	my ($m) = @_;
	return join ' ', map { $m->{$_} } qw/status amount_capturable
		amount_received amount_refunded/;
}

sub check_payment {
	my ($m, $d, $what) = @_;
	my $got = join ' ', map { $d->{$_} // '-' } qw/status
		amount_capturable amount_received amount_refunded/;
	miss("$what $m->{id}: model '" . view($m) . "', API '$got'")
		unless $got eq view($m);
}

sub left { $_[0]{amount_received} - $_[0]{amount_refunded} }

sub refunded {
	my ($m, $amount) = @_;
	$m->{amount_refunded} += $amount;
	$m->{status} = left($m) ? 'partially_refunded' : 'refunded';
	$m->{refunds}++;
}

###############################################################################
# the operations; each returns after checking its answers

# a keyed request, sometimes retried: the same answer, replayed when it
# was stored; another request ($alt) with the key is refused
sub keyed {
	my ($tn, $method, $uri, $body, $stored, $alt) = @_;
	my @k = ('Idempotency-Key: wl-' . $op);
	my $r = call($tn, $method, $uri, $body, @k);

	if (rand() < 0.5) {
		my $again = call($tn, $method, $uri, $body, @k);
		$seen{retry}++;
		if (answer($again) ne answer($r)) {
			miss("retry of $uri: '" . answer($r) . "' then '"
				. answer($again) . "'");
		} elsif ($stored->($r)) {
			miss("retry of $uri not replayed byte for byte")
				unless ($again->{headers}{'idempotent-replayed'} // '')
				eq 'true' && $again->{body} eq $r->{body};
			$seen{replay}++;
		}
	}

	if (defined $alt && $stored->($r) && rand() < 0.2) {
		my $other = call($tn, $method, $uri, $alt, @k);
		miss("the key with another body: " . answer($other))
			unless answer($other) eq '422 idempotency_key_reused';
		$seen{reused}++;
	}

	return $r;
}

# outcomes of execution are stored with the key; what the database
# refused (amount_too_large, payment_not_refundable) is not
sub stored_unless {
	my %no = map { $_ => 1 } @_;
	return sub { my $r = shift;
		defined $r->{status} && !$no{$r->{json}{error}{code} // ''} };
}

sub send_op {
	my ($tn, $method, $uri, $body, $stored, $alt) = @_;
	return rand() < 0.4 ? keyed($tn, $method, $uri, $body, $stored, $alt)
		: call($tn, $method, $uri, $body);
}

sub op_create {
	my ($tn, %force) = @_;
	my $x = rand;
	my $tail = $x < 0.04 ? 2 : $x < 0.08 ? 5 : $x < 0.16 ? 8
		: $x < 0.21 ? 9 : undef;
	my $manual = rand() < 0.4;
	($tail, $manual) = (undef, 1) if $force{requires_capture};
	my %req = (amount => amount($tail),
		currency => pick(qw/usd usd eur jpy kwd/),
		capture_method => $manual ? 'manual' : 'automatic');
	$req{metadata} = { op => "$op" } if rand() < 0.3;

	my $amount = $req{amount};
	my $status = !defined $tail
		? ($manual ? 'requires_capture' : 'succeeded')
		: $tail == 2 || $tail == 5 ? 'failed'
		: $tail == 8 ? 'requires_action' : 'processing';

	my $r = send_op($tn, 'POST', '/v1/payments', body(\%req),
		stored_unless(), body({ %req, amount => $amount + 100 }));
	my $d = $r->{json}{data} // $r->{json}{error}{payment} // {};

	if ((($r->{status} // 0) != 200 && ($r->{status} // 0) != 402)
		|| !$d->{id})
	{
		return miss('create: ' . answer($r));
	}

	my $m = $model{$d->{id}} = { id => $d->{id}, tenant => $tn,
		currency => $req{currency}, amount => $amount, status => $status,
		amount_capturable => $status eq 'requires_capture' ? $amount : 0,
		amount_received => $status eq 'succeeded' ? $amount : 0,
		amount_refunded => 0, refunds => 0 };
	push @{$tn->{pays}}, $m;

	miss("create: $d->{amount} $d->{currency}, asked $amount "
		. $req{currency}) unless $d->{amount} == $amount
		&& $d->{currency} eq $req{currency};
	check_payment($m, $d, 'created');
	$seen{"create_$status"}++;
}

# a payment of the tenant, mostly one in one of the given states
sub payment_of {
	my ($tn, @states) = @_;
	my @p = @{$tn->{pays}};
	return undef unless @p;
	my %s = map { $_ => 1 } @states;
	my @in = grep { $s{$_->{status}} } @p;
	return @in && rand() < 0.85 ? pick(@in) : pick(@p);
}

sub op_capture {
	my ($tn) = @_;
	my $m = payment_of($tn, 'requires_capture') or return;
	my $cap = $m->{amount_capturable};
	my %req;
	my $x = rand;
	if ($x < 0.5) {
		$req{amount} = 1 + int rand($cap || 1000);
	} elsif ($x < 0.6) {
		$req{amount} = $cap + 1 + int rand 100;
	}

	my $r = send_op($tn, 'POST', "/v1/payments/$m->{id}/capture",
		body(\%req), stored_unless(),
		body({ amount => ($req{amount} // 0) + 1 }));
	my $want;

	if ($m->{status} ne 'requires_capture') {
		$want = '409 payment_not_capturable';
	} elsif (($req{amount} // $cap) > $cap) {
		$want = '400 amount_invalid';
	} else {
		$want = '200 succeeded';
		$m->{status} = 'succeeded';
		$m->{amount_received} = $req{amount} // $cap;
		$m->{amount_capturable} = 0;
		$seen{$req{amount} && $req{amount} < $cap ? 'capture_partial'
			: 'capture_full'}++;
	}

	miss("capture: want '$want', got '" . answer($r) . "'")
		unless answer($r) eq $want;
	check_payment($m, $r->{json}{data}, 'captured') if $want =~ /^200/;
}

sub op_cancel {
	my ($tn) = @_;
	my $m = payment_of($tn, 'requires_capture', 'requires_action')
		or return;

	my $r = send_op($tn, 'POST', "/v1/payments/$m->{id}/cancel", '{}',
		stored_unless());
	my $want;

	if ($m->{status} =~ /^(?:requires_capture|requires_action)$/) {
		$want = '200 canceled';
		$m->{status} = 'canceled';
		$m->{amount_capturable} = 0;
		$seen{cancel}++;
	} else {
		$want = '409 payment_not_cancelable';
	}

	miss("cancel: want '$want', got '" . answer($r) . "'")
		unless answer($r) eq $want;
	check_payment($m, $r->{json}{data}, 'canceled') if $want =~ /^200/;
}

sub refundable { $_[0]{status} =~ /^(?:succeeded|partially_refunded)$/ }

sub op_refund {
	my ($tn) = @_;
	my $m = payment_of($tn, 'succeeded', 'partially_refunded') or return;
	my $left = left($m);
	my %req = (payment => $m->{id});
	my $x = rand;
	if ($x < 0.5) {
		$req{amount} = 1 + int rand($left || 1000);
	} elsif ($x < 0.6) {
		$req{amount} = $left + 1 + int rand 100;
	}
	$req{reason} = 'requested_by_customer' if rand() < 0.3;

	my $r = send_op($tn, 'POST', '/v1/refunds', body(\%req),
		stored_unless('amount_too_large', 'payment_not_refundable'),
		body({ %req, reason => 'duplicate' }));
	my $amount = $req{amount} // $left;
	my $want;

	if (!refundable($m)) {
		$want = '409 payment_not_refundable';
	} elsif ($amount > $left) {
		$want = '400 amount_too_large';
	} else {
		$want = '200 succeeded';
		my $d = $r->{json}{data} // {};
		miss("refund of $amount: " . ($d->{amount} // '-'))
			unless ($d->{amount} // 0) == $amount
			&& ($d->{payment} // '') eq $m->{id}
			&& ($d->{currency} // '') eq $m->{currency};
		$seen{$amount < $left ? 'refund_partial' : 'refund_full'}++;
		refunded($m, $amount) if answer($r) eq $want;
	}

	miss("refund: want '$want', got '" . answer($r) . "'")
		unless answer($r) eq $want;
}

# refunds of one payment sent at once: together they never exceed what
# is left, and each one refused did not fit
sub op_race_refunds {
	my ($tn) = @_;
	my @p = grep { refundable($_) && left($_) >= 4 } @{$tn->{pays}};
	return unless @p;
	my $m = pick(@p);
	my $left = left($m);
	my @amounts = map { 1 + int rand(0.6 * $left) } 1 .. 2 + int rand 3;
	push @amounts, undef if rand() < 0.3;

	my @s = map { start($tn, 'POST', '/v1/refunds',
		body({ payment => $m->{id}, defined $_ ? (amount => $_) : () })) }
		@amounts;
	my @r = map { finish($_) } @s;

	my %refused = map { $_ => 1 } '400 amount_too_large',
		'409 payment_not_refundable';
	my $sum = 0;
	my @losers;
	for my $i (0 .. $#r) {
		if (answer($r[$i]) eq '200 succeeded') {
			$sum += $r[$i]{json}{data}{amount};
			miss('a racing refund answered another amount')
				if defined $amounts[$i]
				&& $r[$i]{json}{data}{amount} != $amounts[$i];
			refunded($m, $r[$i]{json}{data}{amount});
		} elsif ($refused{answer($r[$i])}) {
			push @losers, $amounts[$i];
		} else {
			miss('racing refund: ' . answer($r[$i]));
		}
	}

	miss("racing refunds took $sum of $left") if $sum > $left;
	miss("racing refunds of @amounts on $left: one of " . ($_ // 'all')
		. " refused with " . ($left - $sum) . ' left')
		for grep { defined $_ && $_ <= $left - $sum } @losers;
	$seen{race_refunds}++;
	$seen{race_refused}++ if @losers;
}

# a capture and a cancel of one payment at once: exactly one wins
sub op_race_capture_cancel {
	my ($tn) = @_;
	my @p = grep { $_->{status} eq 'requires_capture' } @{$tn->{pays}};
	unless (@p) {
		# none to race over: one is made, so that every run races
		op_create($tn, requires_capture => 1);
		@p = grep { $_->{status} eq 'requires_capture' } @{$tn->{pays}};
		return unless @p;
	}
	my $m = pick(@p);

	my @s = (start($tn, 'POST', "/v1/payments/$m->{id}/capture", '{}'),
		start($tn, 'POST', "/v1/payments/$m->{id}/cancel", '{}'));
	my ($cap, $can) = map { finish($_) } @s;
	my $got = answer($cap) . ' / ' . answer($can);

	if ($got eq '200 succeeded / 409 payment_not_cancelable') {
		$m->{status} = 'succeeded';
		$m->{amount_received} = $m->{amount_capturable};
	} elsif ($got eq '409 payment_not_capturable / 200 canceled') {
		$m->{status} = 'canceled';
	} else {
		return miss("capture racing cancel: $got");
	}
	$m->{amount_capturable} = 0;
	$seen{race_capture_cancel}++;
}

# one keyed refund sent three times at once: applied once; the others
# wait (409) or replay it
sub op_race_key {
	my ($tn) = @_;
	my @p = grep { refundable($_) && left($_) >= 2 } @{$tn->{pays}};
	return unless @p;
	my $m = pick(@p);
	my $amount = 1 + int rand(left($m) / 2);
	my $b = body({ payment => $m->{id}, amount => $amount });

	my @s = map { start($tn, 'POST', '/v1/refunds', $b,
		"Idempotency-Key: race-$op") } 1 .. 3;
	my @r = map { finish($_) } @s;

	my %bodies = map { $_->{body} => 1 }
		grep { ($_->{status} // 0) == 200 } @r;
	my @bad = grep { answer($_)
		!~ /^(?:200 succeeded|409 idempotency_key_in_use)$/ } @r;
	if (@bad || keys %bodies != 1) {
		return miss('one key three times at once: '
			. join(', ', map { answer($_) } @r));
	}
	refunded($m, $amount);
	$seen{race_key}++;
}

# another tenant's payment is as absent as a missing one
sub op_foreign {
	my ($tn) = @_;
	my @other = grep { $_ != $tn && @{$_->{pays}} } @tenants;
	return unless @other;
	my $m = pick(@{pick(@other)->{pays}});

	my $what = pick(qw/capture cancel refund read/);
	my $r = $what eq 'read' ? call($tn, 'GET', "/v1/payments/$m->{id}")
		: $what eq 'refund' ? call($tn, 'POST', '/v1/refunds',
			body({ payment => $m->{id}, amount => 1 }))
		: call($tn, 'POST', "/v1/payments/$m->{id}/$what", '{}');

	miss("another tenant's $what: " . answer($r))
		unless answer($r) eq '404 resource_missing';
	$seen{foreign}++;
}

sub op_read {
	my ($tn) = @_;
	my $m = payment_of($tn) or return;
	my $r = call($tn, 'GET', "/v1/payments/$m->{id}");
	check_payment($m, $r->{json}{data} // {}, 'read');
	$seen{read}++;
}

###############################################################################
# the workload

my @ops = (
	[ 30, \&op_create ], [ 14, \&op_capture ], [ 8, \&op_cancel ],
	[ 26, \&op_refund ], [ 5, \&op_race_refunds ],
	[ 5, \&op_race_capture_cancel ], [ 4, \&op_race_key ],
	[ 4, \&op_foreign ], [ 4, \&op_read ],
);
my $weights = 0;
$weights += $_->[0] for @ops;

for my $i (1 .. 400) {
	$op = $i;
	my $tn = pick(@tenants);
	my $x = rand $weights;
	for my $o (@ops) {
		$x -= $o->[0];
		next if $x >= 0;
		# the first operations of a tenant make its payments
		(@{$tn->{pays}} < 3 ? \&op_create : $o->[1])->($tn);
		last;
	}
}

is(scalar @miss, 0, 'every answer is the model\'s')
	or diag(join "\n", @miss[0 .. ($#miss < 30 ? $#miss : 30)]);

my @kinds = qw/create_succeeded create_requires_capture create_failed
	create_requires_action create_processing capture_partial capture_full
	cancel refund_partial refund_full race_refunds race_refused
	race_capture_cancel race_key retry replay reused foreign read/;
is(join(' ', grep { !$seen{$_} } @kinds), '',
	'the workload did each kind of operation')
	or diag($json->encode(\%seen));
note($json->encode(\%seen));

###############################################################################
# in the end: every payment as the model says

@miss = ();
for my $m (values %model) {
	$op = 'end';
	my $r = call($m->{tenant}, 'GET', "/v1/payments/$m->{id}");
	check_payment($m, $r->{json}{data} // {}, 'at the end');
}
is(scalar @miss, 0, 'every payment reads back as the model says ('
	. scalar(keys %model) . ')')
	or diag(join "\n", @miss[0 .. ($#miss < 30 ? $#miss : 30)]);

my $in = join ', ', map { "'$_->{id}'" } @tenants;

sub sql { $t->psql(shift) }

my $refunds = 0;
$refunds += $_->{refunds} for values %model;
is(sql("SELECT count(*) FROM payments WHERE tenant_id IN ($in)") . ' '
	. sql("SELECT count(*) FROM refunds WHERE tenant_id IN ($in)"),
	scalar(keys %model) . " $refunds", 'no payment or refund made twice');

is(sql("SELECT count(*) FROM payments WHERE tenant_id IN ($in) "
	. "AND (amount_refunded > amount_captured OR amount_refunded <> "
	. "(SELECT coalesce(sum(amount), 0) FROM refunds r WHERE "
	. "r.payment_id = payments.id AND r.status = 'succeeded'))"), 0,
	'no payment refunded beyond what was captured, none miscounted');

is(sql("SELECT count(*) FROM refunds WHERE tenant_id IN ($in) "
	. "AND status <> 'succeeded'"), 0, 'every refund succeeded');

###############################################################################
# the ledger

is(sql("SELECT count(*) FROM (SELECT tenant_id, currency, sum(CASE "
	. "direction WHEN 'debit' THEN amount ELSE -amount END) s "
	. "FROM ledger_entries WHERE tenant_id IN ($in) "
	. "GROUP BY tenant_id, currency) x WHERE s <> 0"), 0,
	'each tenant\'s ledger balances in every currency');

# what the merchant is owed: captured less refunded
my %owed;
for my $m (values %model) {
	my $net = $m->{amount_received} - $m->{amount_refunded};
	next unless $m->{amount_received};
	$owed{"$m->{tenant}{id} " . uc $m->{currency}} += $net;
}
my $want = join "\n", map { "$_ $owed{$_}" } sort keys %owed;
my $got = sql("SELECT tenant_id || ' ' || currency || ' ' || sum(CASE "
	. "direction WHEN 'credit' THEN amount ELSE -amount END) "
	. "FROM ledger_entries WHERE tenant_id IN ($in) "
	. "AND account = 'merchant:payable' GROUP BY tenant_id, currency "
	. "ORDER BY 1");
is(join("\n", sort split /\n/, $got), $want,
	'each tenant\'s merchant account holds captured less refunded');

# the sequencer (every worker's timer, payflow_ledger_seal_interval) seals
# what the workload wrote, off the request path, within a moment
my $in_time = $t->poll(10, sub {
	sql("SELECT sum(unsealed) FROM (SELECT (payflow_ledger_verify(id, "
		. "false)).unsealed FROM tenants WHERE id IN ($in)) v") eq '0'
}, 0.1);
ok($in_time, 'every entry of the workload is sealed by the sequencer');
is(sql("SELECT count(*) FROM ledger_entries e WHERE tenant_id IN ($in) "
	. "AND NOT EXISTS (SELECT 1 FROM ledger_seals s "
	. "WHERE s.entry_id = e.id)"), 0, 'none is left out');
is(sql("SELECT count(*) FROM ledger_seals WHERE tenant_id IN ($in) "
	. "AND sealed_at - (SELECT created_at FROM ledger_entries "
	. "WHERE id = entry_id) > interval '5 seconds'"), 0,
	'each sealed within 5 s of its transaction\'s start');

is(join(' ', map { sql("SELECT coalesce(broken_seq, 0) FROM "
	. "payflow_ledger_verify('$_->{id}', false)") } @tenants), '0 0 0',
	'each tenant\'s hash chain verifies');

is(join(' ', map { my $id = $_->{id}; sql("SELECT count(*) FROM "
	. "ledger_entries WHERE tenant_id = '$id'") > 0 ? 'some' : 'none' }
	@tenants), 'some some some', 'every tenant has a ledger');

###############################################################################

$t->stop;
is(scalar $t->crash_lines, 0, 'no worker crash');
is(scalar $t->alert_lines, 0, 'no alerts');

###############################################################################
