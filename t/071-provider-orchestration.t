#!/usr/bin/perl

# Paystack and Flutterwave against their emulators (redirect flows, wire
# formats, verification by the reconciler, refunds), and orchestration
# across providers: failover only from a provider that provably took
# nothing, none after a timeout (reconciled at the original provider
# instead), circuit breakers opening, probing and closing, weighted and
# lowest-cost routing, and the provider metrics.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua->plan(51);

my %secret = (
	stripe => 'sk_test_' . join('', map { ('a' .. 'z')[rand 26] } 1 .. 24),
	paystack => 'sk_test_' . join('', map { ('0' .. '9')[rand 10] } 1 .. 40),
	flutterwave => 'FLWSECK_TEST-' . join('', map { ('a' .. 'f')[rand 6] }
		1 .. 32) . '-X',
);
$t->write_file("$_.key", "$secret{$_}\n") for keys %secret;

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

    payflow_jobs_interval 200ms;
    payflow_reconcile_after 1s;
    payflow_provider_breaker failures=3 window=30s open=2s;

    payflow_provider stripe type=stripe
                     base_url=http://127.0.0.1:%%PORT_8091%%
                     secret_file=%%TESTDIR%%/stripe.key timeout=1s;
    payflow_provider flaky type=stripe retries=0
                     base_url=http://127.0.0.1:%%PORT_8091%%
                     secret_file=%%TESTDIR%%/stripe.key timeout=1s;
    payflow_provider stripe_down type=stripe retries=0
                     base_url=http://127.0.0.1:9
                     secret_file=%%TESTDIR%%/stripe.key;
    payflow_provider paystack type=paystack
                     base_url=http://127.0.0.1:%%PORT_8092%%
                     secret_file=%%TESTDIR%%/paystack.key timeout=1s;
    payflow_provider flutterwave type=flutterwave
                     base_url=http://127.0.0.1:%%PORT_8093%%
                     secret_file=%%TESTDIR%%/flutterwave.key timeout=1s;

    payflow_route priority currency=USD stripe_down stripe;
    payflow_route priority currency=EUR stripe paystack;
    payflow_route weighted currency=GBP stripe:80 paystack:20;
    payflow_route lowest_cost currency=ZAR stripe:2.9%+30 paystack:1.5%+100;
    payflow_route success_rate currency=CAD flaky stripe;

    lua_shared_dict stripe 4m;
    lua_shared_dict paystack 4m;
    lua_shared_dict flutterwave 4m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }

    server {
        listen       127.0.0.1:%%PORT_8091%%;
        set $stripe_secret "STRIPE";
        location / { content_by_lua_file %%EMULATORS%%/stripe.lua; }
    }

    server {
        listen       127.0.0.1:%%PORT_8092%%;
        set $paystack_secret "PAYSTACK";
        location / { content_by_lua_file %%EMULATORS%%/paystack.lua; }
    }

    server {
        listen       127.0.0.1:%%PORT_8093%%;
        set $flutterwave_secret "FLUTTERWAVE";
        location / { content_by_lua_file %%EMULATORS%%/flutterwave.lua; }
    }
}

EOF
$conf =~ s/STRIPE/$secret{stripe}/;
$conf =~ s/PAYSTACK/$secret{paystack}/;
$conf =~ s/FLUTTERWAVE/$secret{flutterwave}/;
$t->write_file_expand('nginx.conf', $conf);

$t->run;

my %port = (stripe => $t->port('8091'), paystack => $t->port('8092'),
	flutterwave => $t->port('8093'));

sub emulator {
	my ($name, $method, $uri, $body) = @_;
	return http_parse(http_request($method, $uri, port => $port{$name},
		defined $body ? (body => $body,
			headers => ['Content-Type: text/plain',
				'Content-Length: ' . length $body]) : ()));
}

sub requests { emulator(shift, 'GET', '/_emulator/requests')->{json} // [] }
sub fault { emulator(shift, 'POST', '/_emulator/fault', shift) }

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'orchestra' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'developer' });
my $key = $r->{json}{data}{secret};

sub pay {
	my ($body, @h) = @_;
	return bearer($key, 'POST', '/v1/payments', { amount => 4200, %$body },
		headers => [@h]);
}

sub payment { my $r = shift; $r->{json}{data} // $r->{json}{error}{payment} }

sub get { bearer($key, 'GET', '/v1/payments/' . shift)->{json}{data} }

sub settled {
	my ($id, $from) = @_;
	return $t->poll(10, sub { my $s = get($id)->{status};
		$s ne $from ? $s : undef }, 0.2) // $from;
}

sub events {
	my $id = shift;
	my $d = bearer($key, 'GET', "/v1/payments/$id/events")->{json}{data};
	return ref $d eq 'ARRAY' ? $d : $d->{data} // [];
}

###############################################################################
# Paystack: initialize, the customer pays on Paystack's page, the
# reconciler verifies and settles

$r = pay({ currency => 'ngn', provider => 'paystack',
	customer => { email => 'ada@example.com' },
	return_url => 'https://shop.example/back' });
my $p = payment($r);
is($p->{status}, 'requires_action', 'Paystack: requires_action');
like($p->{next_action}{redirect_url} // '',
	qr{^https://checkout\.paystack\.com/\w+$}, 'to Paystack\'s checkout');

my ($req) = reverse @{requests('paystack')};
my $sent = decode_json($req->{body});
is("$req->{method} $req->{uri}", 'POST /transaction/initialize',
	'/transaction/initialize');
is(join(' ', @$sent{qw/email amount currency reference callback_url/}),
	"ada\@example.com 4200 NGN $p->{id} https://shop.example/back",
	'e-mail, amount in kobo, currency, reference = payment id, callback');
is($req->{authorization}, "Bearer $secret{paystack}", 'the secret key');
like($req->{content_type}, qr{^application/json}, 'as JSON');

emulator('paystack', 'POST', "/_emulator/complete/$p->{id}", 'success');
is(settled($p->{id}, 'requires_action'), 'succeeded',
	'paid on the checkout page: the reconciler verifies, succeeded');
my ($verify) = grep { $_->{uri} eq "/transaction/verify/$p->{id}" }
	@{requests('paystack')};
ok($verify, 'by /transaction/verify/:reference');
my ($ev) = grep { $_->{type} eq 'payment.succeeded' } @{events($p->{id})};
is(($ev->{source} // '') . ' ' . ($ev->{provider} // ''), 'system paystack',
	'the event is the system\'s, at Paystack');

$r = bearer($key, 'POST', '/v1/refunds', { payment => $p->{id},
	amount => 1000 });
is($r->{json}{data}{status}, 'pending', 'a Paystack refund starts pending');
($req) = reverse @{requests('paystack')};
$sent = decode_json($req->{body});
is("$req->{uri} $sent->{transaction} $sent->{amount}",
	"/refund $p->{id} 1000", '/refund: transaction reference, amount');
my $rf = $r->{json}{data}{id};
is($t->poll(10, sub { my $s = bearer($key, 'GET', "/v1/refunds/$rf")
	->{json}{data}{status}; $s ne 'pending' ? $s : undef }, 0.3) // 'pending',
	'succeeded', 'the reconciler asks Paystack again: processed, succeeded');
ok((grep { $_->{uri} =~ m{^/refund/\d+$} } @{requests('paystack')}),
	'by GET /refund/:id');
is($t->psql("SELECT amount_refunded FROM payments WHERE id = '$p->{id}'"),
	1000, 'the refund is on the payment (and the ledger)');

$r = pay({ currency => 'ngn', provider => 'paystack',
	customer => { email => 'failed+bo@example.com' } });
is(settled(payment($r)->{id}, 'requires_action'), 'failed',
	'declined on the checkout page: failed once verified');

is(pay({ currency => 'ngn', provider => 'paystack' })->{json}{error}{param},
	'customer[email]', 'Paystack needs the customer\'s e-mail');
is(pay({ currency => 'ngn', provider => 'paystack', capture_method =>
	'manual', customer => { email => 'a@b.example' } })->{json}{error}{param},
	'capture_method', 'and has no manual capture');

###############################################################################
# Flutterwave: the hosted link, major units, the transaction id for refunds

$r = pay({ currency => 'ngn', amount => 4250, provider => 'flutterwave',
	customer => { email => 'success+cy@example.com' },
	return_url => 'https://shop.example/back' });
$p = payment($r);
like($p->{next_action}{redirect_url} // '',
	qr{^https://checkout\.flutterwave\.com/v3/hosted/pay/\w+$},
	'Flutterwave: the hosted link');
($req) = reverse @{requests('flutterwave')};
like($req->{body}, qr/"amount":42\.50[,}]/, 'the amount in major units');
like($req->{body}, qr/"tx_ref":"$p->{id}"/, 'tx_ref = the payment id');
is(settled($p->{id}, 'requires_action'), 'succeeded',
	'verified by reference: succeeded');
my $flw = $t->psql("SELECT provider_reference FROM payments "
	. "WHERE id = '$p->{id}'");
like($flw, qr/^\d+$/, 'the transaction\'s id becomes the reference');

$r = bearer($key, 'POST', '/v1/refunds', { payment => $p->{id},
	amount => 1000 });
is($r->{json}{data}{status}, 'succeeded', 'Flutterwave refund: completed');
($req) = reverse @{requests('flutterwave')};
is("$req->{uri} $req->{body}", "/v3/transactions/$flw/refund "
	. qq/{"amount":10.00,"comments":"$r->{json}{data}{id}"}/,
	'POST /v3/transactions/:id/refund, in major units');

$r = pay({ currency => 'ngn', provider => 'flutterwave',
	customer => { email => 'failed+cy@example.com' } });
is(settled(payment($r)->{id}, 'requires_action'), 'failed',
	'Flutterwave: declined on the checkout page, failed once verified');

###############################################################################
# failover: stripe_down takes no connection, so nothing can have moved;
# the payment goes on to stripe, and says so

$r = pay({ currency => 'usd', payment_method => 'pm_card_visa' });
$p = payment($r);
is("$p->{status} $p->{provider}", 'succeeded stripe',
	'failover from an unreachable provider: succeeded at the next');
like($p->{routing}, qr/^priority: stripe, failover from stripe_down \(provider_unavailable\)/,
	'the routing records why');
my @rerouted = grep { $_->{type} eq 'payment.rerouted' } @{events($p->{id})};
is(scalar @rerouted . ' ' . ($rerouted[0]{provider} // ''), '1 stripe',
	'and so does the event log');

###############################################################################
# no failover after a timeout: the first provider may have charged.  The
# payment stays at stripe, processing, paystack is never called, and the
# reconciler settles it at stripe with the same Idempotency-Key

my $np = @{requests('paystack')};
my $ns = @{requests('stripe')};
fault('stripe', 'timeout');
$r = pay({ currency => 'eur', payment_method => 'pm_card_visa',
	customer => { email => 'success+dee@example.com' } });
$p = payment($r);
is("$p->{status} $p->{provider}", 'processing stripe',
	'a timeout after sending: processing, at the same provider');
is(@{requests('paystack')} - $np, 0, 'the next provider was not called');
is(settled($p->{id}, 'processing'), 'succeeded',
	'the reconciler asked Stripe again: succeeded');
my @creates = grep { $_->{uri} eq '/v1/payment_intents' }
	@{requests('stripe')}[$ns .. $#{requests('stripe')}];
is(join(' ', map { $_->{idempotency_key} } @creates), "$p->{id} $p->{id}",
	'both sends under the payment\'s key: Stripe charged once');
is($t->psql("SELECT count(*) FROM ledger_entries "
	. "WHERE payment_id = '$p->{id}'"), 2, 'one charge in the ledger');

# a 500 (it may have charged), then 429 on both retries: still undecided,
# never failed over
$np = @{requests('paystack')};
fault('stripe', $_) for qw/500 429 429/;
$p = payment(pay({ currency => 'eur', payment_method => 'pm_card_visa',
	customer => { email => 'success+eve@example.com' } }));
is("$p->{status} $p->{provider}", 'processing stripe',
	'a refusal after an undecided attempt: still processing, same provider');
is(@{requests('paystack')} - $np, 0, 'and no other provider was called');
is(settled($p->{id}, 'processing'), 'succeeded', 'settled by the reconciler');

###############################################################################
# the circuit breaker: three outages within the window open it

fault('stripe', '500') for 1 .. 3;
pay({ currency => 'usd', provider => 'flaky',
	payment_method => 'pm_card_visa' }) for 1 .. 3;
$ns = @{requests('stripe')};
$r = pay({ currency => 'usd', provider => 'flaky',
	payment_method => 'pm_card_visa' });
is("$r->{status} " . ($r->{json}{error}{code} // ''),
	'503 provider_unavailable', 'open: refused at once');
is(@{requests('stripe')} - $ns, 0, 'without calling the provider');

my $m = http_parse(http_get('/metrics'));
like($m->{body}, qr/payflow_provider_circuit_state\{provider="flaky",mode="test",state="open"\} 1/,
	'the metric shows it open');
like($m->{body}, qr/payflow_provider_calls_total\{provider="flaky",mode="test",operation="charge",outcome="unknown"\} 3/,
	'and counts the calls');

sleep 2.2;
$r = pay({ currency => 'usd', provider => 'flaky',
	payment_method => 'pm_card_visa' });
is(payment($r)->{status}, 'succeeded', 'after "open": a probe goes through');
like(http_parse(http_get('/metrics'))->{body},
	qr/payflow_provider_circuit_state\{provider="flaky",mode="test",state="closed"\} 1/,
	'and its success closes the circuit');

# stripe_down's circuit opened too (one outage per failover above and
# here): its payments now skip it without trying
pay({ currency => 'usd', payment_method => 'pm_card_visa' }) for 1 .. 2;
$p = payment(pay({ currency => 'usd', payment_method => 'pm_card_visa' }));
like($p->{routing}, qr/1 skipped: circuit open/,
	'an open circuit is skipped, and the routing says so');

###############################################################################
# weighted and lowest-cost routing

my %n;
for (1 .. 100) {
	$p = payment(pay({ currency => 'gbp', payment_method => 'pm_card_visa',
		customer => { email => 'success+w@example.com' } }));
	$n{$p->{provider}}++;
}
ok(($n{stripe} // 0) >= 65 && ($n{stripe} // 0) <= 95,
	"weighted 80:20: stripe took $n{stripe} of 100");
like($p->{routing}, qr/^weighted: /, 'the strategy is recorded');

is(payment(pay({ currency => 'zar', amount => 1000,
	payment_method => 'pm_card_visa',
	customer => { email => 'success+c@example.com' } }))->{provider},
	'stripe', 'lowest cost for 10.00: stripe (59 against 115)');
is(payment(pay({ currency => 'zar', amount => 100000,
	payment_method => 'pm_card_visa',
	customer => { email => 'success+c@example.com' } }))->{provider},
	'paystack', 'lowest cost for 1000.00: paystack (1600 against 2930)');

# success rate: flaky failed three of its four charges, stripe none
$p = payment(pay({ currency => 'cad', payment_method => 'pm_card_visa' }));
is("$p->{provider} $p->{routing}", 'stripe success_rate: stripe',
	'success_rate: the provider that has been succeeding goes first');

# reloads keep the providers' zone (and start its slots afresh)
$t->reload for 1 .. 3;
is(payment(pay({ currency => 'usd', provider => 'stripe',
	payment_method => 'pm_card_visa' }))->{status}, 'succeeded',
	'after three reloads: payments go on');

###############################################################################

$t->stop;
my $logs = $t->read_file('error.log') . $t->read_file('access.log');
is(scalar(grep { index($logs, $_) >= 0 } values %secret), 0,
	'no provider secret in any log line');
is(scalar $t->alert_lines, 0, 'no alerts');
