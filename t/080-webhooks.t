#!/usr/bin/perl

# Inbound provider webhooks (ngx_payflow_webhook), for Stripe, Paystack and
# Flutterwave: bodies built from what the emulators hold (the providers'
# own objects), signed as each provider signs; Stripe's signatures are
# also made by Stripe's own library from the npm registry
# (t/node/stripe-sign.js).  For each provider: a valid delivery moves the
# payment, with its event (source "webhook") and ledger entries; a missing
# or wrong signature, a tampered body (a stale timestamp for Stripe) gets
# 401 and moves nothing; a duplicate is acknowledged and changes nothing,
# also when delivered many times at once; a late event never moves a
# payment backwards; a refund event settles a pending refund; unknown
# event types are stored and acknowledged.  Then: secret rotation, bodies
# in nginx's temporary file, the address allowlist, events whose object
# appears later (retried by the jobs), amounts that do not match, the
# metrics, and logs that hold neither secrets nor bodies.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use Digest::SHA qw(hmac_sha256_hex hmac_sha512_hex);
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua;

my $node_dir = "$FindBin::Bin/node";
push @{$t->{skip}}, 'the stripe npm package is not installed (make deps)'
	unless -f "$node_dir/node_modules/stripe/package.json";

$t->plan(117);

sub rand_str { my ($n, @c) = @_; join '', map { $c[rand @c] } 1 .. $n }

my %secret = (
	stripe => 'sk_test_' . rand_str(24, 'a' .. 'z'),
	paystack => 'sk_test_' . rand_str(40, '0' .. '9'),
	flutterwave => 'FLWSECK_TEST-' . rand_str(32, 'a' .. 'f') . '-X',
);
my %whsec = (
	stripe => 'whsec_' . rand_str(32, 'a' .. 'z', 'A' .. 'Z', '0' .. '9'),
	stripe_old => 'whsec_' . rand_str(32, 'a' .. 'z', 'A' .. 'Z'),
	stripe_live => 'whsec_' . rand_str(32, 'a' .. 'z', '0' .. '9'),
	flutterwave => rand_str(24, 'a' .. 'z', '0' .. '9'),
);
$t->write_file("$_.key", "$secret{$_}\n") for keys %secret;
$t->write_file("$_.whsec", "$whsec{$_}\n") for keys %whsec;

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
    payflow_reconcile_after 1h;

    payflow_provider stripe type=stripe
                     base_url=http://127.0.0.1:%%PORT_8091%%
                     secret_file=%%TESTDIR%%/stripe.key timeout=2s;
    payflow_provider stripe type=stripe mode=live
                     base_url=http://127.0.0.1:%%PORT_8091%%
                     secret_file=%%TESTDIR%%/stripe.key timeout=2s;
    payflow_provider paystack type=paystack
                     base_url=http://127.0.0.1:%%PORT_8092%%
                     secret_file=%%TESTDIR%%/paystack.key timeout=2s;
    payflow_provider flutterwave type=flutterwave
                     base_url=http://127.0.0.1:%%PORT_8093%%
                     secret_file=%%TESTDIR%%/flutterwave.key timeout=2s;

    lua_shared_dict stripe 4m;
    lua_shared_dict paystack 4m;
    lua_shared_dict flutterwave 4m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }

        location = /webhooks/stripe {
            payflow_webhook stripe secret_file=%%TESTDIR%%/stripe.whsec
                            secret_file=%%TESTDIR%%/stripe_old.whsec;
        }

        location = /webhooks/paystack {
            payflow_webhook paystack;
        }

        location = /webhooks/flutterwave {
            payflow_webhook flutterwave
                            secret_file=%%TESTDIR%%/flutterwave.whsec;
        }

        location = /webhooks/stripe-live {
            payflow_webhook stripe mode=live
                            secret_file=%%TESTDIR%%/stripe_live.whsec;
        }

        location = /webhooks/stripe-small {
            payflow_webhook stripe secret_file=%%TESTDIR%%/stripe.whsec;
            client_body_in_file_only clean;
            client_max_body_size 64k;
        }

        location = /webhooks/stripe-allow {
            payflow_webhook stripe secret_file=%%TESTDIR%%/stripe.whsec;
            payflow_webhook_allow 10.0.0.0/8 192.168.1.1;
        }

        location = /webhooks/stripe-local {
            payflow_webhook stripe secret_file=%%TESTDIR%%/stripe.whsec;
            payflow_webhook_allow 127.0.0.0/8;
        }
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

# what the configuration refuses
for my $bad (
	[ 'payflow_webhook paystack;', 'payflow_webhook nosuch;',
		'which no "payflow_provider" declares', 'an unknown provider' ],
	[ 'payflow_webhook paystack;', 'payflow_webhook paystack mode=live;',
		'"paystack" in live mode, which no', 'a provider of the other mode' ],
	[ 'payflow_webhook paystack;', 'payflow_webhook flutterwave;',
		"needs the provider's signing secret", 'no secret' ],
	[ 'payflow_webhook paystack;', 'payflow_webhook paystack tolerance=x;',
		'invalid tolerance', 'a bad tolerance' ])
{
	my $c = $t->read_file('nginx.conf');
	$c =~ s/\Q$bad->[0]\E/$bad->[1]/;
	$t->write_file('bad.conf', $c);
	my ($rc, $out) = $t->test_config('bad.conf');
	ok($rc != 0 && index($out, $bad->[2]) >= 0,
		"payflow_webhook with $bad->[3] is refused") or diag($out);
}

$t->run;

my %port = (stripe => $t->port('8091'), paystack => $t->port('8092'),
	flutterwave => $t->port('8093'));

# the provider's API, as the provider's own client sees it
sub emulator {
	my ($name, $method, $uri, $body) = @_;
	return http_parse(http_request($method, $uri, port => $port{$name},
		headers => ["Authorization: Bearer $secret{$name}",
			'Content-Type: text/plain'],
		defined $body ? (body => $body) : ()));
}

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'hooks' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'developer' });
my $key = $r->{json}{data}{secret};

sub get { bearer($key, 'GET', '/v1/payments/' . shift)->{json}{data} }

sub events_of {
	my $id = shift;
	return bearer($key, 'GET', "/v1/payments/$id/events")->{json}{data}{data}
		// [];
}

sub successes {
	my $id = shift;
	return scalar grep { $_->{to_status} eq 'succeeded' } @{events_of($id)};
}

sub deliver {
	my ($path, $body, @h) = @_;
	return http_parse(http_request('POST', $path, body => $body,
		headers => ['Content-Type: application/json', @h]));
}

sub answer { my $r = shift; join ' ', $r->{status} // 'none',
	$r->{json}{data}{result} // $r->{json}{error}{code} // '-' }

sub ledger_balanced {
	return $t->psql('SELECT count(*) FROM (SELECT transaction_id '
		. "FROM ledger_entries WHERE tenant_id = '$tenant' GROUP BY "
		. "transaction_id HAVING sum(CASE WHEN direction = 'debit' THEN "
		. 'amount ELSE -amount END) <> 0) x') . ' '
		. $t->psql('SELECT coalesce(broken_seq, 0) FROM '
		. "payflow_ledger_verify('$tenant', false)");
}

###############################################################################
# each provider: how it signs, a payment waiting on it, its events

sub stripe_sign {
	my ($body, $secret, $ts) = @_;
	$ts //= time;
	return "Stripe-Signature: t=$ts,v1="
		. hmac_sha256_hex("$ts.$body", $secret);
}

# Stripe's own library signs (and checks) too
sub stripe_lib {
	my ($body, $secret, $ts) = @_;
	$t->write_file('payload.json', $body);
	my $h = `node $node_dir/stripe-sign.js $t->{dir}/payload.json '$secret' \Q@{[ $ts // '' ]}\E`;
	chomp $h;
	return "Stripe-Signature: $h";
}

sub stripe_lib_accepts {
	my ($body, $header, $secret) = @_;
	$t->write_file('payload.json', $body);
	$header =~ s/^Stripe-Signature: //;
	my $out = `node $node_dir/stripe-sign.js --verify $t->{dir}/payload.json '$header' '$secret'`;
	chomp $out;
	return $out;
}

my $evt = 0;

my %p = (
	stripe => {
		path => '/webhooks/stripe',
		applies => 'applied', source => 'webhook',
		sign => sub { stripe_sign($_[0], $whsec{stripe}) },
		wrong => sub { stripe_sign($_[0], 'whsec_' . 'x' x 32) },
		create => sub {
			my (%o) = @_;
			my $r = bearer($key, 'POST', '/v1/payments',
				{ amount => 4200, currency => 'usd', provider => 'stripe',
				  payment_method => 'pm_card_authenticationRequired',
				  return_url => 'https://shop.example/back' });
			my $pay = $r->{json}{data};
			emulator('stripe', 'POST',
				"/_emulator/complete/$pay->{provider_reference}",
				'succeeded') unless $o{open};
			return $pay;
		},
		paid => sub {
			my ($pay, %o) = @_;
			my $pi = emulator('stripe', 'GET',
				"/v1/payment_intents/$pay->{provider_reference}")->{json};
			$pi->{status} = $o{status} if $o{status};
			$pi->{amount} = $o{amount} if $o{amount};
			return encode_json({ id => 'evt_' . rand_str(24, 'A' .. 'Z'),
				object => 'event', api_version => '2024-06-20',
				created => time, livemode => JSON::PP::false,
				pending_webhooks => 1, type => $o{type}
					// 'payment_intent.succeeded',
				data => { object => $pi } });
		},
		late => { type => 'payment_intent.processing',
			status => 'processing' },
		refund_amount => 13,
		refunded => sub {
			my ($refund) = @_;
			my $re = emulator('stripe', 'GET',
				"/v1/refunds/$refund->{provider_reference}")->{json};
			$re->{status} = 'succeeded';
			return encode_json({ id => 'evt_' . rand_str(24, 'A' .. 'Z'),
				object => 'event', type => 'refund.updated',
				created => time, livemode => JSON::PP::false,
				data => { object => $re } });
		},
		other => sub { encode_json({ id => 'evt_' . rand_str(24, 'a' .. 'z'),
			object => 'event', type => 'customer.created',
			data => { object => { id => 'cus_1', object => 'customer' } } }) },
	},

	paystack => {
		path => '/webhooks/paystack',
		applies => 'applied', source => 'webhook',
		sign => sub { 'x-paystack-signature: '
			. hmac_sha512_hex($_[0], $secret{paystack}) },
		wrong => sub { 'x-paystack-signature: '
			. hmac_sha512_hex($_[0], 'sk_test_' . '1' x 40) },
		create => sub {
			my $r = bearer($key, 'POST', '/v1/payments',
				{ amount => 500000, currency => 'ngn',
				  provider => 'paystack',
				  customer => { email => 'success+hook@example.com' } });
			return $r->{json}{data};
		},
		paid => sub {
			my ($pay, %o) = @_;
			my $data = emulator('paystack', 'GET',
				"/transaction/verify/$pay->{id}")->{json}{data};
			$data->{status} = $o{status} if $o{status};
			$data->{amount} = $o{amount} if $o{amount};
			return encode_json({ event => $o{type} // 'charge.success',
				data => $data });
		},
		late => { type => 'charge.failed', status => 'failed' },
		refund_amount => 1000,
		refunded => sub {
			my ($refund) = @_;
			my $id = $refund->{provider_reference};
			emulator('paystack', 'POST', "/_emulator/refund/$id/status",
				'processed');
			my $data = emulator('paystack', 'GET', "/refund/$id")
				->{json}{data};
			return encode_json({ event => 'refund.processed',
				data => $data });
		},
		other => sub { encode_json({ event => 'transfer.success',
			data => { id => 77, reference => 'trf_1', status => 'success',
				amount => 100 } }) },
	},

	# verif-hash signs no body: the webhook makes the reconciler ask
	flutterwave => {
		path => '/webhooks/flutterwave',
		applies => 'verifying', source => 'system',
		sign => sub { "verif-hash: $whsec{flutterwave}" },
		wrong => sub { 'verif-hash: ' . rand_str(24, 'a' .. 'z') },
		create => sub {
			my $r = bearer($key, 'POST', '/v1/payments',
				{ amount => 500000, currency => 'ngn',
				  provider => 'flutterwave',
				  customer => { email => 'success+hook@example.com' } });
			return $r->{json}{data};
		},
		paid => sub {
			my ($pay, %o) = @_;
			my $data = emulator('flutterwave', 'GET',
				"/v3/transactions/verify_by_reference?tx_ref=$pay->{id}")
				->{json}{data};
			$data->{status} = $o{status} if $o{status};
			$data->{amount} = $o{amount} / 100 if $o{amount};
			return encode_json({ event => $o{type} // 'charge.completed',
				'event.type' => 'CARD_TRANSACTION', data => $data });
		},
		late => { status => 'failed' },
		refund_amount => 1300,
		refunded => sub {
			my ($refund) = @_;
			my $id = $refund->{provider_reference};
			emulator('flutterwave', 'POST', "/_emulator/refund/$id/status",
				'completed');
			my $data = emulator('flutterwave', 'GET', "/v3/refunds/$id")
				->{json}{data};
			return encode_json({ event => 'refund.completed',
				data => $data });
		},
		other => sub { encode_json({ event => 'transfer.completed',
			data => { id => 88, reference => 'trf_2',
				status => 'SUCCESSFUL' } }) },
	},
);

###############################################################################

for my $name (qw(stripe paystack flutterwave)) {
	my $p = $p{$name};

	my $pay = $p->{create}->();
	is($pay->{status}, 'requires_action', "$name: a payment waits on "
		. 'the provider');

	my $body = $p->{paid}->($pay);

	# refused, and nothing moves
	is(answer(deliver($p->{path}, $body)), '401 signature_missing',
		"$name: no signature: 401");
	is(answer(deliver($p->{path}, $body, $p->{wrong}->($body))),
		'401 signature_invalid', "$name: the wrong secret: 401");
	if ($name ne 'flutterwave') {
		(my $tampered = $body) =~ s/("amount":\s*)(\d+)/$1 . ($2 + 1)/e;
		is(answer(deliver($p->{path}, $tampered, $p->{sign}->($body))),
			'401 signature_invalid', "$name: a tampered body: 401");
	} else {
		# verif-hash is the secret itself, over no body: what is left to
		# check is that it is all of the secret
		is(answer(deliver($p->{path}, $body, 'verif-hash: '
			. substr($whsec{flutterwave}, 0, -1))),
			'401 signature_invalid', "$name: part of the hash: 401");
	}
	is(get($pay->{id})->{status}, 'requires_action',
		"$name: none of them moved the payment");

	# applied once
	my $ok = deliver($p->{path}, $body, $name eq 'stripe'
		? stripe_lib($body, $whsec{stripe}) : $p->{sign}->($body));
	is(answer($ok), "200 $p->{applies}", "$name: a valid delivery is "
		. $p->{applies}
		. ($name eq 'stripe' ? ' (signed by the stripe package)' : ''));
	$t->poll(5, sub { get($pay->{id})->{status} eq 'succeeded' });
	my $now = get($pay->{id});
	is("$now->{status} $now->{amount_received}",
		"succeeded $pay->{amount}", "$name: the payment succeeded");
	my ($ev) = grep { $_->{to_status} eq 'succeeded' }
		@{events_of($pay->{id})};
	is(join(' ', map { $_ // '-' } @$ev{qw(type from_status source
		provider)}), "payment.succeeded requires_action $p->{source} $name",
		"$name: its event tells where it came from");
	is($ev->{request_id} // '-', $p->{source} eq 'webhook'
		? $ok->{headers}{'x-request-id'} : '-',
		"$name: with the delivery's request id (if the webhook moved it)");
	is(ledger_balanced(), '0 0', "$name: the ledger balances, its chain "
		. 'verifies');

	my $dup = deliver($p->{path}, $body, $p->{sign}->($body));
	is(answer($dup) . ' ' . ($dup->{json}{data}{duplicate} ? 'dup' : '-'),
		"200 $p->{applies} dup", "$name: a duplicate is acknowledged as such");
	is($ok->{json}{data}{event}, $dup->{json}{data}{event},
		"$name: the same stored event");
	is(successes($pay->{id}), 1, "$name: and moves nothing again");

	# a late event never moves it back
	my $late = $p->{paid}->($pay, %{$p->{late}});
	is(answer(deliver($p->{path}, $late, $p->{sign}->($late))),
		'200 unchanged', "$name: a late event is acknowledged");
	is(get($pay->{id})->{status}, 'succeeded',
		"$name: and leaves the payment succeeded");

	# many deliveries of one event at once
	my $pay2 = $p->{create}->();
	my $body2 = $p->{paid}->($pay2);
	my @race = http_many(8, $p->{path}, method => 'POST', body => $body2,
		headers => ['Content-Type: application/json',
			$p->{sign}->($body2)]);
	my %seen;
	$seen{($_->{status} // 'none') . ' '
		. ($_->{json}{data}{duplicate} ? 'dup' : 'new')}++ for @race;
	is(join(',', map { "$_=$seen{$_}" } sort keys %seen),
		'200 dup=7,200 new=1', "$name: eight at once: one applies it");
	$t->poll(5, sub { get($pay2->{id})->{status} eq 'succeeded' });
	is(successes($pay2->{id}) . ' ' . get($pay2->{id})->{status},
		'1 succeeded', "$name: one transition");

	# a refund the provider settles later
	$r = bearer($key, 'POST', '/v1/refunds', { payment => $pay->{id},
		amount => $p->{refund_amount} });
	my $refund = $r->{json}{data};
	$refund->{provider_reference} = $t->psql('SELECT provider_reference '
		. "FROM refunds WHERE id = '$refund->{id}'");
	is($refund->{status}, 'pending', "$name: a refund waits on the "
		. 'provider');
	my $rbody = $p->{refunded}->($refund);
	is(answer(deliver($p->{path}, $rbody, $p->{sign}->($rbody))),
		"200 $p->{applies}", "$name: its webhook is $p->{applies}");
	$t->poll(5, sub { bearer($key, 'GET', "/v1/refunds/$refund->{id}")
		->{json}{data}{status} eq 'succeeded' });
	$r = bearer($key, 'GET', "/v1/refunds/$refund->{id}");
	is($r->{json}{data}{status}, 'succeeded', "$name: the refund "
		. 'succeeded');
	$now = get($pay->{id});
	is("$now->{status} $now->{amount_refunded}",
		"partially_refunded $p->{refund_amount}",
		"$name: the payment is partially refunded");

	# what PayFlow does not act on is kept and acknowledged
	my $other = $p->{other}->();
	is(answer(deliver($p->{path}, $other, $p->{sign}->($other))),
		'200 ignored', "$name: another event type is acknowledged");
}

is($t->psql('SELECT count(*) FROM webhook_events'), 15,
	'every verified delivery stored once');
is(ledger_balanced(), '0 0', 'the ledger balances, its chain verifies');

###############################################################################
# Stripe specifics

my $s = $p{stripe};
my $pay = $s->{create}->();
my $body = $s->{paid}->($pay);

# our signatures are what Stripe's library accepts, and the reverse
is(stripe_lib_accepts($body, stripe_sign($body, $whsec{stripe}),
	$whsec{stripe}), 'ok', 'the stripe package accepts the test signature');

my $old = time - 301;
is(answer(deliver('/webhooks/stripe', $body,
	stripe_lib($body, $whsec{stripe}, $old))), '401 signature_expired',
	'a signature older than 300 s: 401');
is(answer(deliver('/webhooks/stripe', $body,
	stripe_sign($body, $whsec{stripe}, time + 400))),
	'401 signature_expired', 'one from the future: 401');
is(answer(deliver('/webhooks/stripe', $body,
	'Stripe-Signature: v1=' . hmac_sha256_hex($body, $whsec{stripe}))),
	'401 signature_invalid', 'no timestamp: 401');
is(answer(deliver('/webhooks/stripe', $body, 'Stripe-Signature: t='
	. time . ',v0=' . hmac_sha256_hex(time . ".$body", $whsec{stripe}))),
	'401 signature_invalid', 'only a v0 scheme: 401');
is(get($pay->{id})->{status}, 'requires_action', 'still nothing moved');

# rotation: any v1 under any configured secret
my $ts = time;
is(answer(deliver('/webhooks/stripe', $body, "Stripe-Signature: t=$ts,v1="
	. hmac_sha256_hex("$ts.$body", 'whsec_other') . ',v1='
	. hmac_sha256_hex("$ts.$body", $whsec{stripe}))), '200 applied',
	'two v1 signatures, the second one matching: applied');
$pay = $s->{create}->();
$body = $s->{paid}->($pay);
is(answer(deliver('/webhooks/stripe', $body,
	stripe_sign($body, $whsec{stripe_old}))), '200 applied',
	'signed with the previous secret, still configured: applied');

# a body larger than the buffer goes to nginx's temporary file
$pay = $s->{create}->();
my $big = decode_json($s->{paid}->($pay));
$big->{data}{object}{description} = 'x' x 4000;
$body = encode_json($big);
$r = deliver('/webhooks/stripe-small', $body, stripe_sign($body,
	$whsec{stripe}));
is(answer($r), '200 applied', 'a body in the temporary file is verified');
ok($t->poll(3, sub { !glob("$t->{dir}/client_body_temp/*") }),
	'and the file is gone');
is(answer(deliver('/webhooks/stripe-small', 'x' x 70000,
	stripe_sign('x', $whsec{stripe}))), '413 request_too_large',
	'larger than client_max_body_size: 413');

# the allowlist, and the method
is(answer(deliver('/webhooks/stripe-allow', $body,
	stripe_sign($body, $whsec{stripe}))), '403 address_not_allowed',
	'from an address not allowed: 403');
$body = $s->{other}->();
is(answer(deliver('/webhooks/stripe-local', $body,
	stripe_sign($body, $whsec{stripe}))), '200 ignored',
	'from an address allowed: accepted');
$r = http_parse(http_get('/webhooks/stripe'));
is(answer($r), '405 method_not_allowed', 'GET: 405');

# signed, but not an event
$body = 'not json';
$r = deliver('/webhooks/stripe', $body, stripe_sign($body, $whsec{stripe}));
is(answer($r) . ' ' . ($r->{json}{error}{param} // '-'),
	'400 webhook_malformed body', 'a signed body that is not JSON: 400');
$body = '{"id":"evt_x"}';
is(answer(deliver('/webhooks/stripe', $body,
	stripe_sign($body, $whsec{stripe}))), '400 webhook_malformed',
	'an object without a type: 400');

# another amount than the payment's: kept, not applied
$pay = $s->{create}->();
$body = $s->{paid}->($pay, amount => 1);
is(answer(deliver('/webhooks/stripe', $body,
	stripe_sign($body, $whsec{stripe}))), '200 mismatch',
	'another amount: acknowledged as a mismatch');
is(get($pay->{id})->{status}, 'requires_action', 'and not applied');

# the provider's webhook about a cancel can be recorded before the API's
# own answer from the provider comes back: the cancel still answers 200
my $c = $s->{create}->(open => 1);
emulator('stripe', 'POST', '/_emulator/fault', 'slow');
my $json = '{}';
my $sock = http_request('POST', "/v1/payments/$c->{id}/cancel",
	body => $json, start => 1, headers => ["Authorization: Bearer $key",
	'Content-Type: application/json']);
select undef, undef, undef, 0.2;
$r = deliver('/webhooks/stripe', $body = $s->{paid}->($c,
	type => 'payment_intent.canceled', status => 'canceled'),
	stripe_sign($body, $whsec{stripe}));
is(answer($r) . ' ' . get($c->{id})->{status}, '200 applied canceled',
	'a canceled intent\'s webhook, while the cancel waits on Stripe');
$r = http_parse(http_end($sock));
is(($r->{status} // 'none') . ' ' . ($r->{json}{data}{status} // '-'),
	'200 canceled', 'the cancel answers 200 all the same')
	or diag($r->{body});

# modes and providers never mix
$pay = $s->{create}->();
$body = $s->{paid}->($pay);
is(answer(deliver('/webhooks/stripe-live', $body,
	stripe_sign($body, $whsec{stripe_live}))), '400 webhook_malformed',
	'a test-mode event at the live endpoint: 400');
my $as_live = decode_json($body);
$as_live->{livemode} = JSON::PP::true;
$as_live->{id} = 'evt_' . rand_str(24, 'A' .. 'Z');
$body = encode_json($as_live);
is(answer(deliver('/webhooks/stripe-live', $body,
	stripe_sign($body, $whsec{stripe_live}))), '200 unmatched',
	'a live event naming a test payment: unmatched');
$body = encode_json({ event => 'charge.success', data => { id => 991,
	domain => 'test', status => 'success', reference => $pay->{id},
	amount => $pay->{amount}, currency => 'USD' } });
is(answer(deliver('/webhooks/paystack', $body, $p{paystack}{sign}->($body))),
	'200 unmatched', 'a Paystack event naming a Stripe payment: unmatched');

# a Stripe event about another PaymentIntent than the payment's
my $other_pi = decode_json($s->{paid}->($pay));
$other_pi->{data}{object}{id} = 'pi_' . rand_str(24, 'a' .. 'z');
$body = encode_json($other_pi);
is(answer(deliver('/webhooks/stripe', $body,
	stripe_sign($body, $whsec{stripe}))), '200 mismatch',
	'another PaymentIntent naming the payment: a mismatch');

# a success that does not say for how much is never applied
$body = encode_json({ event => 'charge.success', data => { id => 992,
	domain => 'test', status => 'success', reference => 'pay_x' } });
my $pp = $p{paystack}{create}->();
$body =~ s/pay_x/$pp->{id}/;
is(answer(deliver('/webhooks/paystack', $body, $p{paystack}{sign}->($body))),
	'200 mismatch', 'a success without amount or currency: a mismatch');
is(get($pay->{id})->{status} . ' ' . get($pp->{id})->{status},
	'requires_action requires_action', 'none of them moved a payment');

# an event whose payment is not known (yet): kept, tried again by the jobs
my $ghost = decode_json($s->{paid}->($pay));
$ghost->{data}{object}{metadata}{payflow_payment_id} = 'pay_notyet';
$body = encode_json($ghost);
$r = deliver('/webhooks/stripe', $body, stripe_sign($body, $whsec{stripe}));
is(answer($r), '200 unmatched', 'an unknown payment: acknowledged');
my $wid = $r->{json}{data}{event};
sub schedule { $t->psql("SELECT attempts || ' ' || round(extract(epoch "
	. "FROM retry_at - processed_at)) FROM webhook_events WHERE id = '$wid'") }
is(schedule(), '1 2', 'tried again in 2 s');
ok($t->poll(5, sub { $t->psql('SELECT attempts > 1 FROM webhook_events '
	. "WHERE id = '$wid'") eq 't' }), 'tried again by the jobs');
is(schedule(), '2 4', 'then in 4 s');
# as if the payment it meant had been created since
$t->psql("UPDATE webhook_events SET payment_ref = '$pay->{id}', "
	. "retry_at = now() WHERE id = '$wid'");
ok($t->poll(5, sub { get($pay->{id})->{status} eq 'succeeded' }),
	'applied by a retry once its payment exists');
is($t->psql("SELECT result || ' ' || (retry_at IS NULL) FROM "
	. "webhook_events WHERE id = '$wid'"), 'applied true',
	'and no longer retried');

# one left unmatched is applied when the provider delivers it again
$pay = $s->{create}->();
my $late_one = decode_json($s->{paid}->($pay));
$late_one->{data}{object}{metadata}{payflow_payment_id} = 'pay_notyet2';
my $lbody = encode_json($late_one);
$r = deliver('/webhooks/stripe', $lbody, stripe_sign($lbody, $whsec{stripe}));
my $lid = $r->{json}{data}{event};
$t->psql("UPDATE webhook_events SET payment_ref = '$pay->{id}', "
	. "retry_at = NULL WHERE id = '$lid'");
$r = deliver('/webhooks/stripe', $lbody, stripe_sign($lbody, $whsec{stripe}));
is(answer($r) . ' ' . ($r->{json}{data}{duplicate} ? 'dup' : '-') . ' '
	. get($pay->{id})->{status}, '200 applied dup succeeded',
	'an unmatched event delivered again is applied');

# stored as received, never changed
is($t->psql("SELECT payload = \$\$$body\$\$ FROM webhook_events "
	. "WHERE id = '$wid'"), 't', 'the raw body is stored');
$t->psql("UPDATE webhook_events SET payload = 'x' WHERE id = '$wid'");
like($t->psql_status // '', qr/^[1-9]/, 'and cannot be changed');

###############################################################################
# metrics and logs

my $m = http_parse(http_get('/metrics'))->{body} // '';
sub metric {
	my ($name, @l) = @_;
	my $labels = '';
	while (my ($k, $v) = splice @l, 0, 2) {
		$labels .= ($labels ? ',' : '') . "$k=\"$v\"";
	}
	return $m =~ /^\Q$name\E\{\Q$labels\E\} (\d+)$/m ? $1 : 'absent';
}
is(metric('payflow_webhook_verifications_total', provider => 'stripe',
	mode => 'test', result => 'invalid'), 4,
	'invalid signatures counted');
is(metric('payflow_webhook_verifications_total', provider => 'stripe',
	mode => 'test', result => 'stale'), 2, 'stale ones');
is(metric('payflow_webhook_verifications_total', provider => 'stripe',
	mode => 'test', result => 'refused'), 1, 'refused addresses');
is(metric('payflow_webhook_events_total', provider => 'paystack',
	mode => 'test', result => 'duplicate'), 8,
	'duplicates counted');
is(metric('payflow_webhook_events_total', provider => 'stripe',
	mode => 'test', result => 'mismatch'), 2, 'mismatches');
is(metric('payflow_webhook_events_total', provider => 'flutterwave',
	mode => 'test', result => 'verifying'), 3,
	'and ones left to the reconciler to verify');

SKIP: {
	skip 'promtool not installed (package prometheus)', 1
		unless -x '/usr/bin/promtool';
	$t->write_file('metrics.txt', $m);
	my $out = `/usr/bin/promtool check metrics < $t->{dir}/metrics.txt 2>&1`;
	is($? >> 8, 0, 'promtool check metrics accepts them') or diag($out);
}

$t->stop;

my $log = $t->read_file('error.log');
my $lines = () = $log =~ /payflow webhook: "stripe" delivery refused/g;
ok($lines >= 1 && $lines < 8, "refusals are logged, at most a line a second "
	. "($lines lines for 8)");
my @leaks = grep { index($log, $_) >= 0 }
	(values %whsec, values %secret, 'payment_intent.succeeded',
	 'charge.success', 'success+hook');
is("@leaks", '', 'no secret and no body in the error log');
is($t->alert_lines, 0, 'no alerts');
