#!/usr/bin/perl

# Provider accounts per tenant (sql/0025, docs/accounts.md): a tenant
# connects its own Stripe, Paystack and Flutterwave accounts; each secret
# key is tried at the provider (the emulators check it as the providers
# do) before anything is stored, refused with the provider's reason,
# stored sealed (a pg_dump holds no key), never shown again (a hint
# only); listed, changed and closed by the tenant alone, with manage
# permission; bad input answered 400 with the parameter.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua->plan(42);

sub rnd { join '', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. $_[0] }

my %secret = (
	stripe => 'sk_test_' . rnd(24),
	paystack => 'sk_test_' . rnd(40),
	flutterwave => 'FLWSECK_TEST-' . rnd(32) . '-X',
);
my $whsec = 'whsec_' . rnd(32);
my $any_secret = join '|', map { quotemeta } values(%secret), $whsec;

$t->write_file("kek$_", join('', map { sprintf '%02x', int rand 256 }
	1 .. 32) . "\n") for 1 .. 2;

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
    KEKS
    payflow_provider_account_base_url BASEURL;

    lua_shared_dict stripe 4m;
    lua_shared_dict paystack 4m;
    lua_shared_dict flutterwave 4m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
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

sub conf {
	my ($base, $keks) = @_;
	(my $c = $conf) =~ s/BASEURL/$base/;
	$keks //= 'payflow_kek k1 file=%%TESTDIR%%/kek1;';
	$c =~ s/KEKS/$keks/;
	$t->write_file_expand('nginx.conf', $c);
}

conf('on');
$t->run;

my %url = (
	stripe => 'http://127.0.0.1:' . $t->port('8091'),
	paystack => 'http://127.0.0.1:' . $t->port('8092'),
	flutterwave => 'http://127.0.0.1:' . $t->port('8093'),
);

sub tenant_keys {
	my ($name) = @_;
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => $name });
	my $tenant = $r->{json}{data}{id};
	my @k = map { $t->admin_api('POST',
		"/v1/admin/tenants/$tenant/api_keys",
		{ mode => 'test', role => $_ })->{json}{data}{secret} }
		qw(admin developer);
	return ($tenant, @k);
}

my ($tenant, $key, $dev) = tenant_keys('accounts');
my ($other, $okey) = tenant_keys('accounts other');

sub connect_account {
	my ($k, %f) = @_;
	return bearer($k, 'POST', '/v1/provider_accounts', { %f });
}

sub err {
	my ($r) = @_;
	return join ' ', $r->{status}, $r->{json}{error}{param} // '-',
		$r->{json}{error}{code} // '-';
}

sub count {
	return $t->psql("SELECT count(*) FROM provider_accounts "
		. "WHERE tenant_id = '$tenant'");
}

###############################################################################
# connected, after the provider took the key

my $r = connect_account($key, provider => 'stripe',
	secret_key => $secret{stripe}, webhook_secret => $whsec,
	base_url => $url{stripe}, currencies => ['usd', 'EUR'],
	fees => { percent => 290, fixed => 30 }, description => 'main');
is($r->{status}, 200, 'a Stripe account whose key the provider takes')
	or diag $r->{raw};
my $a = $r->{json}{data};
like($a->{id} // '', qr/^pa_[0-9A-Za-z]{24}$/, 'with an id');
is($a->{secret_key}, 'sk_test_...' . substr($secret{stripe}, -4),
	'its key shown as a hint only');
ok(($a->{webhook_secret} // 0) eq JSON::PP::true
	&& $r->{raw} !~ /$any_secret/, 'no secret in the answer');
is_deeply([$a->{currencies}, $a->{fees}, $a->{enabled}],
	[['usd', 'eur'], { percent => 290, fixed => 30 }, JSON::PP::true],
	'currencies, fees, enabled');
is($a->{webhook_url}, "/webhooks/stripe/$a->{id}", 'its webhook URL');

my $row = $t->psql("SELECT secret || ' ' || webhook_secret FROM "
	. "provider_accounts WHERE id = '$a->{id}'");
like($row, qr/^pf1\.k1\.\S+ pf1\.k1\.\S+$/, 'both secrets sealed under k1');
unlike($row, qr/$any_secret/, 'neither in the clear');

for my $p (qw(paystack flutterwave)) {
	$r = connect_account($key, provider => $p, secret_key => $secret{$p},
		base_url => $url{$p});
	is($r->{status}, 200, "a $p account")
		or diag $r->{raw};
}

my $dump = join '',
	`$ENV{PAYFLOW_ROOT}/scripts/pf-env test dump --data-only 2>/dev/null`;
ok($dump =~ /COPY public.provider_accounts/, 'pg_dump of the database');
unlike($dump, qr/$any_secret/, 'holds no provider key or webhook secret');

###############################################################################
# refused by the provider, or not asked at all

my $n = count();
$r = connect_account($key, provider => 'stripe',
	secret_key => 'sk_test_' . rnd(24), base_url => $url{stripe});
is(err($r), '400 secret_key provider_rejected',
	'a key Stripe refuses: 400 secret_key');
like($r->{json}{error}{message} // '',
	qr/^stripe refused the key \(HTTP 401\): Invalid API Key provided/,
	'with Stripe\'s reason');
$r = connect_account($key, provider => 'flutterwave',
	secret_key => 'FLWSECK_TEST-' . rnd(32) . '-X',
	base_url => $url{flutterwave});
like($r->{json}{error}{message} // '',
	qr/^flutterwave refused the key \(HTTP 401\): Invalid authorization/,
	'and Flutterwave\'s');
$r = connect_account($key, provider => 'paystack',
	secret_key => $secret{paystack}, base_url => 'http://127.0.0.1:9');
is(err($r), '503 - provider_unavailable',
	'a provider that cannot be reached: 503, try again');
is(count(), $n, 'nothing stored for any of them');

is(err(connect_account($key, provider => 'stripe',
	secret_key => 'sk_live_' . rnd(24), base_url => $url{stripe})),
	'400 secret_key parameter_invalid', 'a live key with a test-mode key');
is(err(connect_account($key, provider => 'adyen', secret_key => 'x' x 20)),
	'400 provider parameter_invalid', 'an unknown provider');
is(err(connect_account($key, provider => 'stripe')),
	'400 secret_key parameter_missing', 'no key');
is(err(connect_account($key, provider => 'stripe',
	secret_key => 'sk_test_' . ('a' x 300))),
	'400 secret_key parameter_invalid', 'a key over 256 characters');
is(err(connect_account($key, provider => 'stripe',
	secret_key => 'sk_test_' . rnd(10), base_url => $url{stripe})),
	'400 secret_key parameter_invalid',
	'a key too short for its hint to hide it');
is(err(connect_account($key, provider => 'stripe',
	secret_key => $secret{stripe}, base_url => 'http:///v1')),
	'400 base_url parameter_invalid', 'a base_url without a host');
is(err(connect_account($key, provider => 'stripe',
	secret_key => $secret{stripe}, base_url => $url{stripe},
	currencies => ['usd', 'xx1'])),
	'400 currencies parameter_invalid', 'a currency that is not ISO 4217');
is(err(connect_account($key, provider => 'stripe',
	secret_key => $secret{stripe}, base_url => $url{stripe},
	fees => { percent => 20000 })),
	'400 fees parameter_invalid', 'fees out of range');
is(err(connect_account($key, provider => 'stripe',
	secret_key => $secret{stripe}, colour => 'red')),
	'400 colour parameter_unknown', 'an unknown field');
is((connect_account($dev, provider => 'stripe',
	secret_key => $secret{stripe}, base_url => $url{stripe}))->{status},
	403, 'a developer key cannot connect accounts');

###############################################################################
# listed, read, changed and closed by its tenant alone

$r = bearer($key, 'GET', '/v1/provider_accounts');
is(scalar @{$r->{json}{data}{data} // []}, 3, 'the tenant lists its three');
is(scalar @{bearer($okey, 'GET', '/v1/provider_accounts')
	->{json}{data}{data} // [1]}, 0, 'another tenant lists none of them');
is(bearer($okey, 'GET', "/v1/provider_accounts/$a->{id}")->{status}, 404,
	'nor reads one');
is(bearer($okey, 'DELETE', "/v1/provider_accounts/$a->{id}")->{status},
	404, 'nor closes one');

$r = bearer($key, 'PATCH', "/v1/provider_accounts/$a->{id}",
	{ enabled => JSON::PP::false, currencies => ['ngn'] });
is_deeply([$r->{status}, $r->{json}{data}{enabled},
	$r->{json}{data}{currencies}, $r->{json}{data}{secret_key}],
	[200, JSON::PP::false, ['ngn'],
	 'sk_test_...' . substr($secret{stripe}, -4)],
	'PATCH disables it and changes its currencies');
is(err(bearer($key, 'PATCH', "/v1/provider_accounts/$a->{id}",
	{ secret_key => 'sk_test_x' })), '400 secret_key parameter_unknown',
	'its key is not changed by PATCH');
is(err(bearer($key, 'PATCH', "/v1/provider_accounts/$a->{id}",
	{ enabled => 'yes' })), '400 enabled parameter_invalid',
	'enabled must be a boolean');

$r = bearer($key, 'DELETE', "/v1/provider_accounts/$a->{id}");
is_deeply([$r->{status}, $r->{json}{data}{deleted}],
	[200, JSON::PP::true], 'DELETE closes it');
is(bearer($key, 'GET', "/v1/provider_accounts/$a->{id}")->{status}, 404,
	'after which it is gone');
is($t->psql("SELECT secret || ' ' || coalesce(webhook_secret, '-') "
	. "FROM provider_accounts WHERE id = '$a->{id}'"), 'pf1.deleted -',
	'and its secrets destroyed');
is($t->psql("SELECT string_agg(action, ',' ORDER BY id) FROM audit_logs "
	. "WHERE target_id = '$a->{id}'"),
	'provider_account.created,provider_account.updated,'
	. 'provider_account.deleted', 'each change audited');

unlike($t->error_log, qr/$any_secret/, 'no secret in the error log');

###############################################################################
# a new current KEK wraps the accounts' secrets again, in the background

conf('on', "payflow_kek k1 file=%%TESTDIR%%/kek1;\n"
	. "    payflow_kek k2 file=%%TESTDIR%%/kek2 current;");
$t->reload;
ok($t->poll(15, sub { $t->psql("SELECT count(*) FROM provider_accounts "
	. "WHERE deleted_at IS NULL AND (secret NOT LIKE 'pf1.k2.%' "
	. "OR webhook_secret NOT LIKE 'pf1.k2.%')") eq '0' }),
	'every open account\'s secrets are wrapped under k2');
ok($t->psql("SELECT count(*) FROM audit_logs WHERE tenant_id = '$tenant' "
	. "AND action = 'provider_account.secret_resealed'") >= 2,
	'audited as sealed again, not as a change');

###############################################################################
# base_url only where the operator allows it

conf('off', 'payflow_kek k2 file=%%TESTDIR%%/kek2;');
$t->reload;
# (until the old worker is gone: it still allows one)
ok($t->poll(5, sub { err(connect_account($key, provider => 'stripe',
	secret_key => $secret{stripe}, base_url => $url{stripe}))
	eq '400 base_url parameter_invalid' }),
	'payflow_provider_account_base_url off: base_url refused');

$t->stop;
