#!/usr/bin/perl

# Payments through tenants' own provider accounts (sql/0026,
# docs/accounts.md): a tenant's payments go to its enabled accounts (by
# the route's strategy and the accounts' fees and currencies), a tenant
# without accounts to the operator's nginx.conf providers; captures,
# refunds and the reconciler reach the account a payment is at; each
# account has its own circuit breaker; webhooks are taken per account
# (/webhooks/<provider>/<account id>) and verified with that account's
# secret only.  Four Stripe emulators, each its own account: the
# operator's, tenant A's two and tenant B's one.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use Digest::SHA qw(hmac_sha256_hex);
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua->plan(41);

sub rnd { join '', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. $_[0] }

# the emulators: the operator's (p), A's (a, c) and B's (b)
my %secret = map { $_ => 'sk_test_' . rnd(24) } qw(p a b c);
my %whsec = map { $_ => 'whsec_' . rnd(32) } qw(a b);

$t->write_file('kek1', join('', map { sprintf '%02x', int rand 256 }
	1 .. 32) . "\n");
$t->write_file('platform.key', "$secret{p}\n");

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
    payflow_kek k1 file=%%TESTDIR%%/kek1;
    payflow_provider_account_base_url on;

    payflow_jobs_interval 200ms;
    payflow_reconcile_after 1s;
    payflow_provider_breaker failures=3 window=30s open=30s;

    payflow_provider platform type=stripe
                     base_url=http://127.0.0.1:%%PORT_8090%%
                     secret_file=%%TESTDIR%%/platform.key timeout=2s;

    payflow_route lowest_cost currency=USD platform:2.9%+30;

    lua_shared_dict stripe_p 4m;
    lua_shared_dict stripe_a 4m;
    lua_shared_dict stripe_b 4m;
    lua_shared_dict stripe_c 4m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /webhooks/ { payflow_webhook accounts; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }

    server {
        listen       127.0.0.1:%%PORT_8090%%;
        set $stripe_secret "SECRET_p";
        set $stripe_dict stripe_p;
        location / { content_by_lua_file %%EMULATORS%%/stripe.lua; }
    }

    server {
        listen       127.0.0.1:%%PORT_8091%%;
        set $stripe_secret "SECRET_a";
        set $stripe_dict stripe_a;
        location / { content_by_lua_file %%EMULATORS%%/stripe.lua; }
    }

    server {
        listen       127.0.0.1:%%PORT_8092%%;
        set $stripe_secret "SECRET_b";
        set $stripe_dict stripe_b;
        location / { content_by_lua_file %%EMULATORS%%/stripe.lua; }
    }

    server {
        listen       127.0.0.1:%%PORT_8093%%;
        set $stripe_secret "SECRET_c";
        set $stripe_dict stripe_c;
        location / { content_by_lua_file %%EMULATORS%%/stripe.lua; }
    }
}

EOF
$conf =~ s/SECRET_$_/$secret{$_}/ for keys %secret;
$t->write_file_expand('nginx.conf', $conf);
$t->run;

my %port = (p => $t->port('8090'), a => $t->port('8091'),
	b => $t->port('8092'), c => $t->port('8093'));

# an emulator as its account's owner sees it
sub emulator {
	my ($e, $method, $uri, $body) = @_;
	return http_parse(http_request($method, $uri, port => $port{$e},
		headers => ["Authorization: Bearer $secret{$e}",
			'Content-Type: text/plain'],
		defined $body ? (body => $body) : ()));
}

sub requests { emulator(shift, 'GET', '/_emulator/requests')->{json} // [] }
sub fault { emulator(shift, 'POST', '/_emulator/fault', shift) }

sub intent_at {
	my ($e, $ref) = @_;
	return emulator($e, 'GET', "/v1/payment_intents/$ref")->{status};
}

sub tenant_key {
	my ($name) = @_;
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => $name });
	my $tenant = $r->{json}{data}{id};
	return ($tenant, $t->admin_api('POST',
		"/v1/admin/tenants/$tenant/api_keys",
		{ mode => 'test', role => 'admin' })->{json}{data}{secret});
}

my ($ta, $ka) = tenant_key('accounts a');
my ($tb, $kb) = tenant_key('accounts b');
my ($tc, $kc) = tenant_key('accounts c');

sub connect_account {
	my ($k, $e, %f) = @_;
	my $r = bearer($k, 'POST', '/v1/provider_accounts', {
		provider => 'stripe', secret_key => $secret{$e},
		base_url => "http://127.0.0.1:$port{$e}", %f });
	return $r->{json}{data}{id} // "($r->{status})";
}

sub pay {
	my ($k, %f) = @_;
	my $r = bearer($k, 'POST', '/v1/payments', { amount => 4200,
		currency => 'usd', payment_method => 'pm_card_visa', %f });
	return $r->{json}{data} // { status => $r->{status},
		code => $r->{json}{error}{code} // '-' };
}

sub get {
	my ($k, $id) = @_;
	return bearer($k, 'GET', "/v1/payments/$id")->{json}{data};
}

sub settled {
	my ($k, $id, $from) = @_;
	return $t->poll(10, sub { my $s = get($k, $id)->{status};
		$s ne $from ? $s : undef }, 0.2) // $from;
}

sub where { my $p = shift; join ' ', $p->{status} // '-',
	$p->{provider} // $p->{code} // '-' }

###############################################################################
# accounts: A has two (the second cheaper, for USD only), B one

my $a1 = connect_account($ka, 'a', webhook_secret => $whsec{a},
	fees => { percent => 290, fixed => 30 });
my $a2 = connect_account($ka, 'c', currencies => ['usd'],
	fees => { percent => 100, fixed => 0 });
my $b1 = connect_account($kb, 'b', webhook_secret => $whsec{b});
like("$a1 $a2 $b1", qr/^pa_\w{24} pa_\w{24} pa_\w{24}$/,
	'three accounts connected');

###############################################################################
# routing: each tenant's payments at its own accounts, the others at the
# operator's providers

my $p = pay($ka);
is(where($p), "succeeded $a2", 'A: at its cheapest account for USD');
like($p->{routing}, qr/^lowest_cost: \Q$a2\E$/,
	'the route\'s strategy, over the accounts\' fees');
is(intent_at('c', $p->{provider_reference}) . ' '
	. intent_at('b', $p->{provider_reference}) . ' '
	. intent_at('p', $p->{provider_reference}), '200 404 404',
	'charged at that account only');
my $pa2 = $p;

$p = pay($ka, currency => 'eur');
is(where($p), "succeeded $a1", 'A in EUR: the account that takes it');
like($p->{routing}, qr/^priority: \Q$a1\E$/, 'no route for EUR: priority');

$p = pay($kb);
is(where($p), "succeeded $b1", 'B: at its own account');
is(intent_at('b', $p->{provider_reference}) . ' '
	. intent_at('a', $p->{provider_reference}), '200 404',
	'never at A\'s');

$p = pay($kc);
is(where($p), 'succeeded platform', 'C, without accounts: the operator\'s');

$p = pay($ka, provider => $b1);
is(where($p), '400 provider_unavailable', 'A cannot name B\'s account');
$p = pay($ka, provider => $a1);
is(where($p), "succeeded $a1", 'A names its own');


###############################################################################
# capture and refund at the payment's account

$p = pay($ka, provider => $a1, capture_method => 'manual');
is(where($p), "requires_capture $a1", 'manual, at A\'s account');
my $manual = $p;

my $n = @{requests('a')};
my $r = bearer($ka, 'POST', "/v1/payments/$p->{id}/capture", {});
is($r->{json}{data}{status}, 'succeeded', 'captured');
is(join(' ', map { $_->{uri} } @{requests('a')}[$n .. $#{requests('a')}]),
	"/v1/payment_intents/$p->{provider_reference}/capture",
	'at A\'s account');

$r = bearer($ka, 'POST', '/v1/refunds', { payment => $pa2->{id},
	amount => 1000 });
is($r->{json}{data}{status}, 'succeeded', 'refunded');
is(scalar(grep { $_->{uri} eq '/v1/refunds' } @{requests('c')}), 1,
	'at the account the payment is at');

###############################################################################
# webhooks per account, verified with that account's secret only

sub event_of {
	my ($e, $ref) = @_;
	my $pi = emulator($e, 'GET', "/v1/payment_intents/$ref")->{json};
	return encode_json({ id => 'evt_' . rnd(24), object => 'event',
		api_version => '2024-06-20', created => time,
		livemode => JSON::PP::false, type => 'payment_intent.succeeded',
		data => { object => $pi } });
}

sub deliver {
	my ($path, $body, $secret, $h) = @_;
	my $ts = time;
	$h //= "Stripe-Signature: t=$ts,v1=" . hmac_sha256_hex("$ts.$body",
		$secret);
	my $r = http_parse(http_request('POST', $path, body => $body,
		headers => ['Content-Type: application/json', $h]));
	return join ' ', $r->{status} // 'none',
		$r->{json}{data}{result} // $r->{json}{error}{code} // '-';
}

$p = pay($ka, provider => $a1,
	payment_method => 'pm_card_authenticationRequired',
	return_url => 'https://shop.example/back');
is(where($p), "requires_action $a1", 'waiting for the customer');
emulator('a', 'POST', "/_emulator/complete/$p->{provider_reference}",
	'succeeded');
my $body = event_of('a', $p->{provider_reference});

is(deliver("/webhooks/stripe/$a1", $body, $whsec{b}),
	'401 signature_invalid', 'signed with another account\'s secret: 401');
is(deliver("/webhooks/stripe/$b1", $body, $whsec{b}), '200 unmatched',
	'at B\'s account, signed by B: not one of B\'s payments');
is(get($ka, $p->{id})->{status}, 'requires_action', 'A\'s payment untouched');
is(deliver('/webhooks/stripe/pa_' . 'x' x 24, $body, $whsec{a}),
	'401 signature_invalid', 'an unknown account: as a bad signature');
is(deliver("/webhooks/paystack/$a1", $body, $whsec{a},
	'x-paystack-signature: ' . 'a' x 128), '401 signature_invalid',
	'the account\'s provider is not the one named');
is(deliver('/webhooks/stripe/nope', $body, $whsec{a}) =~ /^404/ ? 1 : 0, 1,
	'not an account id: 404');
is(deliver("/webhooks/stripe/$a1", $body, $whsec{a}), '200 applied',
	'at A\'s account, signed by A: applied');
is(get($ka, $p->{id})->{status}, 'succeeded', 'the payment succeeded');

###############################################################################
# each account its own breaker; the reconciler reaches the account, from
# a worker that has no copy of it yet

# a 500 and both retries' (an account's calls are retried twice): three
# outages, the payment undecided
fault('c', '500') for 1 .. 3;
my @open = (pay($ka));
is(where($open[0]), "processing $a2",
	'three outages at A\'s cheapest account: undecided');

$p = pay($ka);

# whatever a worker believes, the database keeps payments at their
# tenant's accounts (a failover by hand: processing, with a reason)
sub move {
	my ($id, $to) = @_;
	$t->psql("UPDATE payments SET provider = '$to', routing = 'to $to' "
		. "WHERE id = '$id'");
	return $t->psql_status ? 'refused' : 'moved';
}
is(join(' ', move($open[0]{id}, $b1), move($open[0]{id}, $a1),
	move($open[0]{id}, $a2)), 'refused moved moved',
	'a payment moves to its own tenant\'s accounts only');
is(where($p), "succeeded $a1", 'its circuit open: the next account');
like($p->{routing}, qr/^lowest_cost: \Q$a1\E, 1 skipped: circuit open$/,
	'and the routing says so');
is(where(pay($kc)), 'succeeded platform',
	'the operator\'s provider is unaffected');

my $m = http_parse(http_get('/metrics'))->{body};
like($m, qr/payflow_provider_circuit_state\{provider="\Q$a2\E",mode="test",state="open"\} 1/,
	'the account\'s circuit in the metrics');

$t->reload;
is(settled($ka, $open[0]{id}, 'processing'), 'succeeded',
	'the reconciler settled it, after a reload (no copy in the worker)');
is(intent_at('c', get($ka, $open[0]{id})->{provider_reference}), 200,
	'at the account it is at');

###############################################################################
# a disabled account takes no new payment, but its payments go on; a
# closed one is gone

$p = pay($ka, provider => $a1, capture_method => 'manual');
$r = bearer($ka, 'PATCH', "/v1/provider_accounts/$a1",
	{ enabled => JSON::PP::false });
is($r->{json}{data}{enabled} ? 1 : 0, 0, 'A disables its EUR account');
my $eur = $t->poll(5, sub { my $q = pay($ka, currency => 'eur');
	$q->{provider} eq 'sandbox' ? $q : undef }, 0.3);
is($eur ? where($eur) : 'none', 'succeeded sandbox',
	'its EUR payments go to the default, within seconds');
$r = bearer($ka, 'POST', "/v1/payments/$p->{id}/capture", {});
is($r->{json}{data}{status}, 'succeeded',
	'a payment at the disabled account is still captured there');

# a change made in SQL reaches the workers too (the version moves)
$t->psql("UPDATE provider_accounts SET enabled = true WHERE id = '$a1'");
$eur = $t->poll(5, sub { my $q = pay($ka, currency => 'eur');
	$q->{provider} eq $a1 ? $q : undef }, 0.3);
is($eur ? where($eur) : 'none', "succeeded $a1",
	'enabled again by SQL: back within seconds');
bearer($ka, 'PATCH', "/v1/provider_accounts/$a1",
	{ enabled => JSON::PP::false });

$r = bearer($ka, 'DELETE', "/v1/provider_accounts/$a2");
is($r->{json}{data}{deleted} ? 1 : 0, 1, 'A closes its USD account');
$r = bearer($ka, 'POST', '/v1/refunds', { payment => $pa2->{id},
	amount => 100 });
is("$r->{status} " . ($r->{json}{error}{code} // '-'),
	'409 provider_account_closed',
	'a payment at a closed account is not refunded through PayFlow');
is(where(pay($ka)), 'succeeded platform',
	'and A\'s USD payments go to the operator\'s provider');

###############################################################################
# nothing secret in the log

my $log = $t->error_log;
my $leak = join '|', map { quotemeta } values(%secret), values(%whsec);
unlike($log, qr/$leak/, 'no key or webhook secret in the error log');

# the test database is shared by the files after this one, whose KEKs
# cannot open these accounts: they are closed
$t->stop;
$t->psql("UPDATE provider_accounts SET enabled = false, deleted_at = now(), "
	. "secret = 'pf1.deleted', webhook_secret = NULL "
	. "WHERE tenant_id IN ('$ta', '$tb', '$tc') AND deleted_at IS NULL");
