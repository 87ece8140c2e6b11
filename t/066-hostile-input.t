#!/usr/bin/perl

# Bytes and numbers a hostile client sends where text or an amount is
# expected get a 400 naming what was wrong, never a 500, and leave nothing
# behind: an Idempotency-Key that is not UTF-8 text (create, capture,
# refund), a ?customer= that decodes to invalid UTF-8, control characters,
# capture and refund amounts beyond any payment's limit (a refund of
# 9223372036854775807 used to overflow bigint in the database).  The error
# log holds no [error] line for any of them.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(40);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
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

$t->run;

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'hostile' });
my $tenant = $r->{json}{data}{id} // '';
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ role => 'developer' });
my $key = $r->{json}{data}{secret} // '';

sub call { bearer($key, @_) }

sub res {
	my ($r) = @_;
	return ($r->{status} // 'none') . ' '
		. ($r->{json}{success} ? 'ok' : ($r->{json}{error}{code} // '-'))
		. ' ' . ($r->{json}{error}{param} // '-');
}

sub count {
	my ($table) = @_;
	return $t->psql("SELECT count(*) FROM $table "
		. "WHERE tenant_id = '$tenant'");
}

###############################################################################
# Idempotency-Key: UTF-8 text, no control characters

my $payments = count('payments');

# "\xc3\xec": a lead byte then a byte that is no continuation (found by
# fuzz/fuzz_text.c: ngx_utf8_decode() took it); "\xc0\xaf" overlong "/"
for my $bad ("k\xff", "k\xc3", "\xed\xa0\x80k", "k\x01x", "k\x7f",
	"k\xc3\xec", "\xc0\xafk", "k\xf4\x90\x80\x80")
{
	(my $shown = $bad) =~ s/([^ -~])/sprintf '\\x%02x', ord $1/ge;
	$r = call('POST', '/v1/payments', { amount => 1000, currency => 'usd' },
		headers => ["Idempotency-Key: $bad"]);
	is(res($r), '400 idempotency_key_invalid Idempotency-Key',
		"create with Idempotency-Key \"$shown\": 400");
}

is(count('payments'), $payments, 'no payment made by the refused requests');
is(count('idempotency_keys'), 0, 'no key stored either');

$r = call('POST', '/v1/payments', { amount => 1000, currency => 'usd' },
	headers => ["Idempotency-Key: caf\xc3\xa9-\xe2\x82\xac-1"]);
is(res($r), '200 ok -', 'a UTF-8 key (café-€) is fine');

$r = call('POST', '/v1/payments', { amount => 5000, currency => 'usd',
	capture_method => 'manual' });
my $p = $r->{json}{data}{id} // '';

$r = call('POST', "/v1/payments/$p/capture", {},
	headers => ["Idempotency-Key: k\xff"]);
is(res($r), '400 idempotency_key_invalid Idempotency-Key',
	'capture with a bad key: 400');

$r = call('POST', '/v1/refunds', { payment => $p },
	headers => ["Idempotency-Key: k\xff"]);
is(res($r), '400 idempotency_key_invalid Idempotency-Key',
	'refund with a bad key: 400');

is(call('GET', "/v1/payments/$p")->{json}{data}{status}, 'requires_capture',
	'the payment was not captured');

###############################################################################
# query strings that decode to bad bytes

for my $q ('customer=%ff%40x', 'customer=a%c3%40x.example',
	'customer=a%00b%40x.example', 'customer=a%0a%40x.example')
{
	$r = call('GET', "/v1/payments?$q");
	is(res($r), '400 parameter_invalid customer', "GET /v1/payments?$q: 400");
}

$r = call('GET', '/v1/payments?customer=ren%C3%A9%40x.example');
is(res($r), '200 ok -', 'a UTF-8 customer address is fine');

###############################################################################
# ids and cursors with bad bytes, in paths and query strings: never a 500

for my $req (['GET', '/v1/payments/pay_%ff'], ['GET', '/v1/refunds/%c3%28'],
	['POST', '/v1/payments/%ff/capture', {}],
	['POST', '/v1/payments/pay_%c3%ec/cancel', {}],
	['GET', '/v1/payments/%ff/events'], ['GET', '/v1/events/%ff'],
	['GET', '/v1/api_keys/%ff'], ['GET', '/v1/webhook_endpoints/%ff'],
	['GET', '/v1/payments?starting_after=%ff'],
	['GET', '/v1/payments?ending_before=pay_%c3%ec'],
	['GET', '/v1/events?type=%ff'], ['GET', '/v1/ledger/entries?payment=%ff'],
	['POST', '/v1/refunds', { payment => "pay_\xff" }])
{
	my ($method, $uri, $body) = @$req;
	$r = call($method, $uri, $body);
	like($r->{status} // 0, qr/^4\d\d$/, "$method $uri: " . ($r->{status}
		// 'none') . ' ' . ($r->{json}{error}{code} // ''));
}

###############################################################################
# amounts beyond any payment's limit, before the database sees them

$r = call('POST', "/v1/payments/$p/capture", { amount => 4000 });
is(res($r), '200 ok -', 'captured 4000');

$r = call('POST', '/v1/refunds', { payment => $p, amount => 1000 });
is(res($r), '200 ok -', 'refunded 1000');

for my $amount ('9223372036854775807', '100000000000') {
	$r = call('POST', '/v1/refunds', "{\"payment\":\"$p\",\"amount\":$amount}");
	is(res($r), '400 amount_too_large amount', "refund of $amount: 400");
}

$r = call('POST', '/v1/refunds', { payment => $p, amount => 3001 });
is(res($r), '400 amount_too_large amount', 'refund above what is left: 400');

$r = call('POST', '/v1/payments', { amount => 5000, currency => 'usd',
	capture_method => 'manual' });
my $q = $r->{json}{data}{id} // '';
$r = call('POST', "/v1/payments/$q/capture",
	'{"amount":9223372036854775807}');
is(res($r), '400 amount_too_large amount', 'capture of 2^63-1: 400');

is($t->psql("SELECT amount_refunded FROM payments WHERE id = '$p'"), 1000,
	'only the first refund is booked');

###############################################################################

$t->stop;

my @errors = grep { /\[(?:error|crit|alert|emerg)\]/ }
	split /\n/, $t->error_log;
is(scalar @errors, 0, 'no [error] line for any of it')
	or diag(join "\n", @errors);
