#!/usr/bin/perl

# POST /v1/payments through the Stripe adapter, against the Stripe
# emulator (t/emulators/stripe.lua, lua-nginx-module in a server block of
# the same nginx): what Stripe receives (form encoding, Bearer secret,
# Idempotency-Key derived from the payment id, the request id), how its
# answers map onto PayFlow's states, and the failures: a provider that
# cannot be reached fails the payment (nothing was sent), one that times
# out or fails after the request was sent leaves it processing.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua->plan(66);

my $secret = 'sk_test_' . join '', map { ('a' .. 'z')[rand 26] } 1 .. 24;
$t->write_file('stripe.key', "$secret\n");

my $conf = <<'EOF';

%%LUA_MODULES%%
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=4 queue=512;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    payflow_provider stripe type=stripe
                     base_url=http://127.0.0.1:%%PORT_8091%%/
                     secret_file=%%TESTDIR%%/stripe.key
                     connect_timeout=1s timeout=1s;
    payflow_provider stripe_down type=stripe
                     base_url=http://127.0.0.1:9
                     secret_file=%%TESTDIR%%/stripe.key;

    lua_shared_dict stripe 4m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }

    server {
        listen       127.0.0.1:%%PORT_8091%%;
        set $stripe_secret "SECRET";

        location / {
            content_by_lua_file %%EMULATORS%%/stripe.lua;
        }
    }
}

EOF
$conf =~ s/SECRET/$secret/;
$t->write_file_expand('nginx.conf', $conf);

# what the configuration refuses, before anything runs
for my $bad (
	[ 'type=stripe', 'secret_file=', 'no secret' ],
	[ 'type=paypal secret_env=HOME', 'unknown type', 'unknown type' ],
	[ 'secret_env=HOME', '"type=" is required', 'no type' ])
{
	my $c = $t->read_file('nginx.conf');
	$c =~ s/payflow_provider stripe_down type=stripe\s+base_url=\S+\s+secret_file=\S+;/payflow_provider x $bad->[0];/s;
	$t->write_file('bad.conf', $c);
	my ($rc, $out) = $t->test_config('bad.conf');
	ok($rc != 0 && index($out, $bad->[1]) >= 0,
		"payflow_provider with $bad->[2] is refused") or diag($out);
}

$t->run;

my $emu = $t->port('8091');

sub emulator {
	my ($method, $uri, $body) = @_;
	return http_parse(http_request($method, $uri, port => $emu,
		defined $body ? (body => $body,
			headers => ['Content-Type: text/plain',
				'Content-Length: ' . length $body]) : ()));
}

sub requests { emulator('GET', '/_emulator/requests')->{json} // [] }
sub fault { emulator('POST', '/_emulator/fault', shift) }

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'stripe' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'developer' });
my $key = $r->{json}{data}{secret};

sub pay {
	my ($body, @h) = @_;
	return bearer($key, 'POST', '/v1/payments',
		{ amount => 4200, currency => 'usd', provider => 'stripe', %$body },
		headers => [@h]);
}

sub err { my $r = shift; join ' ', $r->{status} // 'none',
	$r->{json}{error}{code} // '-', $r->{json}{error}{param} // '-' }

sub row {
	my ($id, $cols) = @_;
	return $t->psql("SELECT $cols FROM payments WHERE id = '$id'");
}

sub uri_unescape { my $s = shift; $s =~ s/\+/ /g;
	$s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge; $s }

###############################################################################
# validation

is(err(pay({})), '400 parameter_missing payment_method',
	'stripe needs a payment_method');
is(err(pay({ provider => 'adyen', payment_method => 'pm_card_visa' })),
	'400 provider_unavailable provider', 'an unknown provider is refused');
is(err(pay({ payment_method => 7 })), '400 parameter_invalid payment_method',
	'payment_method must be a string');
is(scalar @{requests()}, 0, 'nothing was sent to Stripe for them');

###############################################################################
# success, and what Stripe received

$r = pay({ payment_method => 'pm_card_visa', description => 'order 7',
	customer => { email => 'buyer@example.com' },
	metadata => { order => '7' } },
	'X-Request-Id: req_stripe_wire_test');
is($r->{status}, 200, 'a Stripe payment is created') or diag($r->{raw});
my $p = $r->{json}{data} // {};
is($p->{status}, 'succeeded', 'pm_card_visa: succeeded');
is($p->{provider}, 'stripe', 'provider recorded');
is($p->{amount_received}, 4200, 'captured in full');
like(row($p->{id}, 'provider_reference'), qr/^pi_[0-9A-Za-z]{24}$/,
	'the PaymentIntent id is the provider reference');
is($t->psql("SELECT string_agg(type, ' ' ORDER BY created_at) FROM "
	. "payment_events WHERE payment_id = '$p->{id}'"),
	'payment.created payment.processing payment.succeeded',
	'created, processing, succeeded in the event log');
is($t->psql("SELECT string_agg(account || ' ' || direction, ', ' ORDER BY "
	. "txid, direction DESC) FROM ledger_entries "
	. "WHERE payment_id = '$p->{id}'"),
	'provider:stripe:clearing debit, merchant:payable credit',
	'the capture is in the ledger, against stripe\'s clearing account');

my ($req) = @{requests()};
is($req->{method} . ' ' . $req->{uri}, 'POST /v1/payment_intents',
	'Stripe got POST /v1/payment_intents');
is($req->{authorization}, "Bearer $secret", 'with the secret key as Bearer');
is($req->{idempotency_key}, $p->{id},
	'and the payment id as its Idempotency-Key');
is($req->{content_type}, 'application/x-www-form-urlencoded',
	'form-encoded');
like($req->{stripe_version} // '', qr/^\d{4}-\d{2}-\d{2}$/,
	'a pinned Stripe-Version');
is($req->{request_id}, 'req_stripe_wire_test',
	'the request id travels to the provider');
my %form = map { my ($k, $v) = split /=/, $_, 2;
	(uri_unescape($k), uri_unescape($v // '')) } split /&/, $req->{body};
is_deeply(\%form, {
	amount => 4200, currency => 'usd', capture_method => 'automatic',
	confirm => 'true', payment_method => 'pm_card_visa',
	description => 'order 7', receipt_email => 'buyer@example.com',
	'automatic_payment_methods[enabled]' => 'true',
	'automatic_payment_methods[allow_redirects]' => 'never',
	'metadata[payflow_payment_id]' => $p->{id} },
	'the form holds exactly the PaymentIntent parameters');

###############################################################################
# the other outcomes

$r = pay({ payment_method => 'pm_card_visa', capture_method => 'manual' });
is($r->{json}{data}{status}, 'requires_capture',
	'manual capture: requires_capture');
is($r->{json}{data}{amount_capturable}, 4200, 'the amount is capturable');

$r = pay({ payment_method => 'pm_card_chargeDeclined' });
is($r->{status} . ' ' . $r->{json}{error}{payment}{status}, '402 failed',
	'pm_card_chargeDeclined: 402, failed');
is($r->{json}{error}{code}, 'generic_decline',
	'with Stripe\'s decline code');
like(row($r->{json}{error}{payment}{id}, 'provider_reference'), qr/^pi_/,
	'the declined intent is referenced');

$r = pay({ payment_method => 'pm_card_chargeDeclinedInsufficientFunds' });
is($r->{json}{error}{payment}{failure_code}, 'insufficient_funds',
	'insufficient funds: its decline code');

$r = pay({ payment_method => 'pm_card_authenticationRequired',
	return_url => 'https://shop.example/back' });
is($r->{json}{data}{status}, 'requires_action', '3DS: requires_action');
like($r->{json}{data}{next_action}{redirect_url} // '',
	qr{^https://hooks\.stripe\.com/3d_secure_2/hosted\?payment_intent=pi_},
	'the redirect is Stripe\'s');
is($r->{json}{data}{next_action}{return_url}, 'https://shop.example/back',
	'and comes back to the return_url');
($req) = reverse @{requests()};
like($req->{body},
	qr/(^|&)return_url=https%3A%2F%2Fshop\.example%2Fback(&|$)/,
	'the return_url was sent to Stripe');
unlike($req->{body}, qr/allow_redirects/,
	'redirects allowed when there is a return_url');

###############################################################################
# capture, cancel and refund go to Stripe first, under keys of their own

my $held = pay({ payment_method => 'pm_card_visa',
	capture_method => 'manual' })->{json}{data};
my $held2 = pay({ payment_method => 'pm_card_visa',
	capture_method => 'manual' })->{json}{data}{id};
my $paid = pay({ payment_method => 'pm_card_visa' })->{json}{data}{id};
my $pi = row($held->{id}, 'provider_reference');

my $ck = 'capture-' . int(rand 1e9);
$r = bearer($key, 'POST', "/v1/payments/$held->{id}/capture",
	{ amount => 4000 }, headers => ["Idempotency-Key: $ck"]);
is($r->{json}{data}{status} . ' ' . $r->{json}{data}{amount_received},
	'succeeded 4000', 'partial capture at Stripe');
($req) = reverse @{requests()};
is("$req->{method} $req->{uri} $req->{body}",
	"POST /v1/payment_intents/$pi/capture amount_to_capture=4000",
	'Stripe was asked to capture that intent, that amount');
is($req->{idempotency_key}, "$held->{id}-capture",
	'under the payment\'s capture key');
is(err(bearer($key, 'POST', "/v1/payments/$held->{id}/capture", {})),
	'409 payment_not_capturable -',
	'a second capture is refused');

my $nr = @{requests()};
is(err(bearer($key, 'POST', "/v1/payments/$held2/cancel", {},
	headers => ["Idempotency-Key: $ck"])),
	'422 idempotency_key_reused Idempotency-Key',
	'the capture\'s key reused for a cancel: refused');
is(@{requests()} - $nr, 0, 'before Stripe is asked anything');

$r = bearer($key, 'POST', "/v1/payments/$held2/cancel", {});
is($r->{json}{data}{status}, 'canceled', 'cancel at Stripe');
($req) = reverse @{requests()};
like($req->{uri}, qr{^/v1/payment_intents/pi_\w+/cancel$},
	'Stripe was asked to cancel');

$r = bearer($key, 'POST', '/v1/refunds', { payment => $paid, amount => 1200 },
	headers => ['Idempotency-Key: refund-' . int(rand 1e9)]);
is($r->{json}{data}{status}, 'succeeded', 'refund at Stripe: succeeded');
($req) = reverse @{requests()};
like($req->{body}, qr/^payment_intent=pi_\w+&amount=1200&metadata%5Bpayflow_refund_id%5D=re_\w+$/,
	'Stripe was asked to refund that intent, that amount');
is($req->{idempotency_key}, $r->{json}{data}{id}, 'under the refund\'s id');
is($t->psql("SELECT status || ' ' || (provider_reference LIKE 're_%') "
	. "|| ' ' || (SELECT amount_refunded FROM payments WHERE id = '$paid') "
	. "FROM refunds WHERE id = '$r->{json}{data}{id}'"), 'succeeded true 1200',
	'recorded with Stripe\'s refund id, and on the payment');

$r = bearer($key, 'POST', '/v1/refunds', { payment => $paid, amount => 13 });
is($r->{json}{data}{status}, 'pending', 'a refund Stripe leaves pending');
is(err(bearer($key, 'POST', '/v1/refunds',
	{ payment => $paid, amount => 3000 })), '400 amount_too_large amount',
	'more than is left (the pending refund reserved) is refused locally');

###############################################################################
# an Idempotency-Key: one PaymentIntent however often the client retries

my $n = @{requests()};
my $k = 'stripe-' . int(rand 1e9);
my $a = pay({ payment_method => 'pm_card_visa' }, "Idempotency-Key: $k");
my $b = pay({ payment_method => 'pm_card_visa' }, "Idempotency-Key: $k");
is($a->{status}, 200, 'keyed payment created');
is($b->{headers}{'idempotent-replayed'}, 'true', 'the retry is a replay');
is($b->{body}, $a->{body}, 'of the very same answer');
is(@{requests()} - $n, 1, 'Stripe was called once');

###############################################################################
# failures

$r = bearer($key, 'POST', '/v1/payments', { amount => 4200,
	currency => 'usd', provider => 'stripe_down',
	payment_method => 'pm_card_visa' });
is($r->{status} . ' ' . $r->{json}{error}{payment}{status}, '503 failed',
	'a provider that cannot be reached: 503, failed');
is($r->{json}{error}{code}, 'provider_unavailable',
	'as provider_unavailable: nothing was sent, no money moved');

$n = @{requests()};
fault('429');
$r = pay({ payment_method => 'pm_card_visa' });
is($r->{json}{data}{status}, 'succeeded',
	'Stripe rate limiting: retried after a backoff, succeeded');
is(@{requests()} - $n, 2, 'in two calls');

$n = @{requests()};
fault('timeout');
$r = pay({ payment_method => 'pm_card_visa' });
is($r->{status}, 200, 'Stripe too slow: answered') or diag($r->{raw});
is($r->{json}{data}{status}, 'processing',
	'the payment stays processing: Stripe may have charged');
is(row($r->{json}{data}{id}, 'amount_captured'), 0,
	'nothing in the ledger until it is verified');
is(@{requests()} - $n, 1, 'Stripe did receive the request');

$n = @{requests()};
fault('500');
$r = pay({ payment_method => 'pm_card_visa' });
is($r->{json}{data}{status}, 'succeeded', 'Stripe 500: retried, succeeded');
is(join(' ', map { $_->{idempotency_key} } @{requests()}[$n .. $n + 1]),
	"$r->{json}{data}{id} $r->{json}{data}{id}",
	'both calls under the payment\'s key');

# The connection closes after Stripe took the request.  curl sends again
# on a fresh connection when a reused one dies like this; the same
# Idempotency-Key makes Stripe replay its answer instead of charging
# twice.  Either way: one intent, and never a wrong state.
$n = @{requests()};
fault('drop');
$r = pay({ payment_method => 'pm_card_visa' });
my @sent = @{requests()}[$n .. $#{requests()}];
ok(($r->{json}{data}{status} // '') =~ /^(succeeded|processing)$/,
	'connection dropped after the request: replayed or processing')
	or diag($r->{raw});
is(scalar(grep { ($_->{idempotency_key} // '') eq $r->{json}{data}{id} }
	@sent), scalar @sent, 'every send carried the payment\'s key');

$r = pay({ payment_method => 'pm_card_visa' });
is($r->{json}{data}{status}, 'succeeded', 'back to normal afterwards');

###############################################################################
# the secret never reaches a log

$t->stop;
my $logs = $t->read_file('error.log') . $t->read_file('access.log');
is(index($logs, $secret), -1, 'the Stripe secret is in no log line');
like($t->read_file('error.log'), qr/stays processing until verified/,
	'undecided payments are logged as such');
is(scalar $t->alert_lines, 0, 'no alerts');
