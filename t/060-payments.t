#!/usr/bin/perl

# POST /v1/payments with the sandbox provider and GET /v1/payments/{id}:
# validation naming the parameter, the sandbox's outcomes, events and
# ledger written with the payment, tenant isolation, and Idempotency-Key
# semantics: replay of the very bytes, 422 on a different request, and
# 50 concurrent requests with one key making exactly one payment.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(43);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=4 queue=512;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    log_format  pay  '$payflow_idempotency $payflow_payment_id $status';

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        payflow_max_amount 100000000;

        access_log  %%TESTDIR%%/pay.log pay;

        location = /metrics { payflow_metrics; }
        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

$t->run;

# the suite shares one database: this file's payments are those made since
my $since = $t->psql('SELECT now()');

sub tenant_key {
	my ($mode) = @_;
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'pay' });
	my $tenant = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
		{ mode => $mode // 'test', role => 'developer' });
	return ($tenant, $r->{json}{data}{secret});
}

my ($tenant, $key) = tenant_key();
my (undef, $other) = tenant_key();
my (undef, $live) = tenant_key('live');

sub pay { bearer($key, 'POST', '/v1/payments', @_) }

sub err { my $r = shift; join ' ', $r->{status} // 'none',
	$r->{json}{error}{code} // '-', $r->{json}{error}{param} // '-' }

###############################################################################
# creation and retrieval

my $r = pay({ amount => 1000, currency => 'usd', description => 'order 42',
	customer => { email => 'a@example.com', name => 'A' },
	metadata => { order => '42' } });
is($r->{status}, 200, 'payment created') or diag($r->{raw});
my $p = $r->{json}{data} // {};
like($p->{id} // '', qr/^pay_[0-9A-Za-z]{24}$/, 'a random pay_ id');
is($p->{status}, 'succeeded', 'sandbox default: succeeded');
is($p->{amount_received}, 1000, 'the amount was captured');
is($p->{currency}, 'usd', 'currency as given, lower case');
is($p->{metadata}{order}, '42', 'metadata kept');
is($p->{livemode}, JSON::PP::false, 'test mode');

$r = bearer($key, 'GET', "/v1/payments/$p->{id}");
is($r->{status}, 200, 'retrieved');
is_deeply($r->{json}{data}, $p, 'retrieve returns the same object');

$r = bearer($other, 'GET', "/v1/payments/$p->{id}");
my $missing = bearer($other, 'GET', '/v1/payments/pay_' . ('x' x 24));
is(err($r), '404 resource_missing id', 'another tenant: 404');
is_deeply($r->{json}{error}, $missing->{json}{error},
	'exactly like a payment that does not exist');

my $events = $t->psql("SELECT string_agg(type, ' ' ORDER BY created_at) "
	. "FROM payment_events WHERE payment_id = '$p->{id}'");
is($events, 'payment.created payment.processing payment.succeeded',
	'its transitions are in the event log');
is($t->psql("SELECT count(*) FROM ledger_entries "
	. "WHERE payment_id = '$p->{id}'"), 2, 'and in the ledger, balanced');

###############################################################################
# the sandbox's outcomes

$r = pay({ amount => 1002, currency => 'usd' });
is($r->{status}, 402, 'amount ..02: declined, 402');
is($r->{json}{error}{type}, 'provider_error', 'a provider error');
is($r->{json}{error}{code}, 'card_declined', 'with its decline code');
is($r->{json}{error}{payment}{failure_code}, 'card_declined',
	'and the failed payment in the error');
is($r->{json}{error}{payment}{status}, 'failed', 'which is failed');
is(pay({ amount => 1005, currency => 'usd' })->{json}{error}{payment}
	{failure_code}, 'insufficient_funds', 'amount ..05: insufficient funds');
$r = pay({ amount => 1008, currency => 'usd',
	return_url => 'https://shop.example/done' });
is($r->{json}{data}{status}, 'requires_action', 'amount ..08: '
	. 'requires_action');
like($r->{json}{data}{next_action}{redirect_url} // '', qr{^https://},
	'with a redirect URL');
is(pay({ amount => 1009, currency => 'usd' })->{json}{data}{status},
	'processing', 'amount ..09: stays processing');
$r = pay({ amount => 1000, currency => 'jpy', capture_method => 'manual' });
is($r->{json}{data}{status}, 'requires_capture', 'manual capture: '
	. 'requires_capture');

###############################################################################
# validation names the parameter; nothing is written

my $before = $t->psql('SELECT count(*) FROM payments');

is(err(pay({ currency => 'usd' })), '400 parameter_missing amount',
	'missing amount');
is(err(pay({ amount => 10.5, currency => 'usd' })),
	'400 amount_invalid amount', 'a non-integer amount');
is(err(pay({ amount => '100', currency => 'usd' })),
	'400 amount_invalid amount', 'an amount as a string');
my $big = pay({ amount => 100000001, currency => 'usd' });
is(err($big) . ' ' . $big->{json}{error}{message},
	'400 amount_invalid amount amount must be a positive integer in the '
	. "currency's minor unit, at most 100000000",
	'more than payflow_max_amount');
is(err(pay({ amount => 100, currency => 'usx' })),
	'400 currency_invalid currency', 'an unknown currency');
is(err(pay({ amount => 100, currency => 'usd', colour => 'red' })),
	'400 parameter_unknown colour', 'an unknown field');
is(err(pay({ amount => 100, currency => 'usd',
	customer => { email => 'a@b.c', age => 3 } })),
	'400 parameter_unknown customer[age]', 'an unknown nested field');
is(err(bearer($key, 'POST', '/v1/payments',
	'{"amount":1,"amount":2,"currency":"usd"}')),
	'400 invalid_json -', 'duplicate keys in the JSON');
is(err(bearer($live, 'POST', '/v1/payments',
	{ amount => 100, currency => 'usd' })),
	'400 provider_unavailable provider', 'live mode: no provider yet');

is($t->psql('SELECT count(*) FROM payments'), $before,
	'no payment written by a refused request');

###############################################################################
# Idempotency-Key

my $k = "order-" . time;
my $first = bearer($key, 'POST', '/v1/payments',
	{ amount => 2500, currency => 'eur' }, headers => ["Idempotency-Key: $k"]);
my $again = bearer($key, 'POST', '/v1/payments',
	{ amount => 2500, currency => 'eur' }, headers => ["Idempotency-Key: $k"]);

is($again->{headers}{'idempotent-replayed'}, 'true', 'a retry is replayed');
is($again->{body}, $first->{body}, 'with the very same bytes');

is(err(bearer($key, 'POST', '/v1/payments',
	{ amount => 2501, currency => 'eur' },
	headers => ["Idempotency-Key: $k"])),
	'422 idempotency_key_reused Idempotency-Key',
	'the same key with another body: 422');

# 50 at once with a new key: one payment; the others wait their turn
# (409, in progress) or replay it
my $c = "burst-" . time;
my $body = '{"amount":3100,"currency":"usd"}';
my $raw = "POST /v1/payments HTTP/1.1\r\nHost: localhost\r\n"
	. "Authorization: Bearer $key\r\nIdempotency-Key: $c\r\n"
	. "Content-Type: application/json\r\n"
	. 'Content-Length: ' . length($body) . "\r\n"
	. "Connection: close\r\n\r\n$body";
my @r = http_many(50, '/v1/payments', request => $raw, timeout => 20);

my %bodies = map { $_->{body} => 1 } grep { ($_->{status} // 0) == 200 } @r;
is($t->psql("SELECT count(*) FROM idempotency_keys k JOIN payments p "
	. "ON p.id = k.payment_id WHERE k.key = '$c'") . '/'
	. $t->psql("SELECT count(*) FROM payments WHERE amount = 3100"),
	'1/1', '50 concurrent requests with one key: exactly one payment');
is(scalar(keys %bodies), 1, 'every 200 among them has the same bytes');

###############################################################################
# what keys did: $payflow_idempotency, $payflow_payment_id, the metric

my $pid = $first->{json}{data}{id};
my $log = $t->read_file('pay.log');
like($log, qr/^new \Q$pid\E 200\n(?:.*\n)*?replayed \Q$pid\E 200$/m,
	'the access log says new, then replayed, with the payment id');
like($log, qr/^reused - 422$/m, 'and reused for the 422');

my @metrics = split /\n/, http_parse(http_get('/metrics'))->{body};
my %m = map { /result="(\w+)"\} (\d+)/ ? ($1 => $2) : () }
	grep { /^payflow_idempotency_total/ } @metrics;

is($m{reused}, 1, 'payflow_idempotency_total counts the reused key');
is($m{new} + $m{replayed} + $m{in_use}, 2 + scalar(@r),
	'and every keyed payment request');
# (a request is counted as it is logged, just after its answer is sent)
my $want = $t->psql("SELECT count(*) || ' ' || "
	. "count(*) FILTER (WHERE status = 'failed') FROM payments "
	. "WHERE created_at >= '$since'");
my $got = $t->poll(5, sub {
	my %n = map { /status="(\w+)"\} (\d+)/ ? ($1 => $2) : () }
		grep { /^payflow_payments_created_total/ }
		split /\n/, http_parse(http_get('/metrics'))->{body};
	my $sum = 0;
	$sum += $_ for values %n;
	my $v = "$sum $n{failed}";
	$v eq $want ? $v : (diag("metrics say $v, payments $want"), undef)[1];
}) // 'never';
is($got, $want,
	'payflow_payments_created_total: every payment, by its outcome');

###############################################################################
