#!/usr/bin/perl

# Capture, cancel and refunds through the API: the state machine's answers
# (409 when a payment cannot), partial amounts, refunds that cannot exceed
# what was captured even when sent at once, Idempotency-Key replays, the
# payment's event log, and a ledger that stays balanced and verifiable.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(24);

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

$t->run;

sub tenant_key {
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'ops' });
	my $tenant = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
		{ role => 'developer' });
	return ($tenant, $r->{json}{data}{secret});
}

my ($tenant, $key) = tenant_key();
my (undef, $other) = tenant_key();

sub call { bearer($key, @_) }
sub res { my $r = shift; ($r->{status} // 'none') . ' '
	. ($r->{json}{success} ? $r->{json}{data}{status}
	                       : $r->{json}{error}{code} // '-') }
sub new_payment { call('POST', '/v1/payments', { currency => 'usd', @_ })
	->{json}{data}{id} }

###############################################################################
# capture

my $p = new_payment(amount => 5000, capture_method => 'manual');

is(res(call('POST', "/v1/payments/$p/capture", { amount => 6000 })),
	'400 amount_invalid', 'capturing more than authorised: 400');
my $r = call('POST', "/v1/payments/$p/capture", { amount => 4000 });
is(res($r), '200 succeeded', 'partial capture');
is($r->{json}{data}{amount_received}, 4000, 'received what was captured');
is(res(call('POST', "/v1/payments/$p/capture", {})),
	'409 payment_not_capturable', 'a second capture: 409');
is(res(bearer($other, 'POST', "/v1/payments/$p/capture", {})),
	'404 resource_missing', 'another tenant cannot capture it');

###############################################################################
# cancel

my $c = new_payment(amount => 700, capture_method => 'manual');
is(res(call('POST', "/v1/payments/$c/cancel")), '200 canceled',
	'an uncaptured payment is canceled');
is(res(call('POST', "/v1/payments/$c/cancel")),
	'409 payment_not_cancelable', 'canceling twice: 409');
is(res(call('POST', "/v1/payments/$p/cancel")),
	'409 payment_not_cancelable', 'a captured payment cannot be canceled');
is(res(call('POST', "/v1/payments/$c/capture", {})),
	'409 payment_not_capturable', 'nor a canceled one captured');

###############################################################################
# refunds

$r = call('POST', '/v1/refunds', { payment => $p, amount => 1500,
	reason => 'requested_by_customer' });
is(res($r), '200 succeeded', 'a partial refund');
my $refund = $r->{json}{data}{id} // '';
like($refund, qr/^re_[0-9A-Za-z]{24}$/, 'a random re_ id');
is(res(call('GET', "/v1/refunds/$refund")), '200 succeeded',
	'the refund can be read back');
is(res(bearer($other, 'GET', "/v1/refunds/$refund")),
	'404 resource_missing', 'not by another tenant');

is(res(call('POST', '/v1/refunds', { payment => $p, amount => 3000 })),
	'400 amount_too_large', 'more than is left: 400');
is(res(call('POST', '/v1/refunds', { payment => $c })),
	'409 payment_not_refundable', 'a canceled payment: 409');
is(res(bearer($other, 'POST', '/v1/refunds', { payment => $p })),
	'404 resource_missing', 'another tenant\'s payment: 404');

is(res(call('POST', '/v1/refunds', { payment => $p })), '200 succeeded',
	'without an amount: what is left');
is(res(call('GET', "/v1/payments/$p")), '200 refunded',
	'the payment is refunded');

# two refunds of 600 on 1000, sent at once: exactly one
my $q = new_payment(amount => 1000);
my $body = qq{{"payment":"$q","amount":600}};
my $raw = "POST /v1/refunds HTTP/1.1\r\nHost: localhost\r\n"
	. "Authorization: Bearer $key\r\nContent-Type: application/json\r\n"
	. 'Content-Length: ' . length($body) . "\r\nConnection: close\r\n\r\n"
	. $body;
my @r = http_many(2, '/v1/refunds', request => $raw);
is(join(' ', sort map { $_->{status} // 'none' } @r), '200 400',
	'concurrent refunds of 600 on 1000: one succeeds, one is refused');

###############################################################################
# Idempotency-Key on capture and refunds

my $m = new_payment(amount => 900, capture_method => 'manual');
my @k = (headers => ["Idempotency-Key: cap-$m"]);
my $first = call('POST', "/v1/payments/$m/capture", {}, @k);
my $again = call('POST', "/v1/payments/$m/capture", {}, @k);
is(res($first) . ' / ' . ($again->{headers}{'idempotent-replayed'} // '-'),
	'200 succeeded / true', 'a retried capture is replayed, not a 409');
is($again->{body}, $first->{body}, 'byte for byte');

###############################################################################
# events and the ledger

$r = call('GET', "/v1/payments/$p/events");
is(join(' ', map { $_->{type} } @{$r->{json}{data}{data} // []}),
	'payment.created payment.processing payment.requires_capture '
	. 'payment.captured refund.created refund.succeeded '
	. 'payment.partially_refunded refund.created refund.succeeded '
	. 'payment.refunded', 'the event log tells the whole story');

is($t->psql("SELECT count(*) FROM (SELECT currency, sum(CASE direction "
	. "WHEN 'debit' THEN amount ELSE -amount END) s FROM ledger_entries "
	. "WHERE tenant_id = '$tenant' GROUP BY currency) x WHERE s <> 0"), 0,
	'the tenant\'s ledger balances');
is($t->psql("SELECT coalesce(broken_seq, 0) FROM "
	. "payflow_ledger_verify('$tenant', false)"), 0,
	'and its hash chain verifies');

###############################################################################
