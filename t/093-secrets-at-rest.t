#!/usr/bin/perl

# Outbound webhook signing secrets sealed at rest (payflow_kek, sql/0023,
# docs/accounts.md): the row holds pf1.<kek>..., never the secret; a
# database dump has no whsec_ in it; deliveries are signed with the secret
# all the same (the Standard Webhooks library checks them); a ciphertext
# moved to another endpoint's row does not open (that endpoint's delivery
# fails with a clear log line, the others go on); a secret written in the
# clear is sealed in the background; a new current KEK re-wraps every row,
# online, after which the old one can go; bad payflow_kek lines stop
# nginx -t with the directive named.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua;

my $node_dir = "$FindBin::Bin/node";
push @{$t->{skip}}, 'the standardwebhooks npm package is not installed '
	. '(make deps)'
	unless -f "$node_dir/node_modules/standardwebhooks/package.json";

$t->plan(26);

my @hex = map { join '', map { sprintf '%02x', int rand 256 } 1 .. 32 }
	1 .. 2;
$t->write_file('kek1', "$hex[0]\n");
$t->write_file('kek2', "$hex[1]\n");

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

    payflow_outbox_allow_private on;
    payflow_outbox_interval 200ms;
    payflow_outbox_timeout 1s;
    payflow_outbox_retries 1s 1s 1s;

    lua_shared_dict receiver 16m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }

    server {
        listen       127.0.0.1:%%PORT_8094%%;
        location / { content_by_lua_file %%EMULATORS%%/receiver.lua; }
    }
}

EOF

sub conf {
	my ($keks) = @_;
	(my $c = $conf) =~ s/KEKS/$keks/;
	$t->write_file_expand('nginx.conf', $c);
}

conf('payflow_kek k1 file=%%TESTDIR%%/kek1;');
$t->run;

my $rport = $t->port('8094');
my $hook = "http://127.0.0.1:$rport/hook";

sub received {
	my ($path) = @_;
	my $r = http_parse(http_get('/_receiver/requests', port => $rport));
	return grep { $_->{uri} eq $path } @{$r->{json} // []};
}

sub sw_verify {
	my ($secret, @d) = @_;
	$t->write_file('deliveries.json', encode_json([ map { {
		id => $_->{id}, timestamp => $_->{timestamp},
		signature => $_->{signature}, body => $_->{body} } } @d ]));
	my $out = `node $node_dir/sw-verify.js '$secret' $t->{dir}/deliveries.json`;
	return join ' ', split /\n/, $out;
}

sub metric {
	my ($name) = @_;
	my $r = http_parse(http_request('GET', '/metrics'));
	return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : -1;
}

sub stored {
	my ($id) = @_;
	return $t->psql("SELECT secret FROM webhook_endpoints WHERE id = '$id'");
}

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'sealed' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'admin' });
my $key = $r->{json}{data}{secret};

sub endpoint {
	my ($path) = @_;
	my $r = bearer($key, 'POST', '/v1/webhook_endpoints',
		{ url => "$hook/$path", events => ['payment.succeeded'] });
	return $r->{json}{data};
}

sub pay { bearer($key, 'POST', '/v1/payments',
	{ amount => 2000, currency => 'usd' }) }

###############################################################################
# sealed at creation

my $a = endpoint('a');
my $b = endpoint('b');
like($a->{secret} // '', qr{^whsec_[A-Za-z0-9+/]{43}=$},
	'the new secret is shown once, as whsec_');
like(stored($a->{id}), qr/^pf1\.k1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/,
	'the row holds it sealed under k1');
unlike(stored($a->{id}), qr/\Q$a->{secret}\E|whsec_/,
	'and not the secret');

# rows other tests wrote before, in the clear, are sealed in the background
$t->poll(15, sub { $t->psql("SELECT count(*) FROM webhook_endpoints "
	. "WHERE secret LIKE 'whsec%' OR previous_secret LIKE 'whsec%'") eq '0' });
my $dump = join '',
	`$ENV{PAYFLOW_ROOT}/scripts/pf-env test dump --data-only 2>/dev/null`;
ok($dump =~ /COPY public.webhook_endpoints/, 'pg_dump of the database');
unlike($dump, qr{whsec_[A-Za-z0-9+/]{43}=},
	'holds no signing secret in the clear');
my $raw = substr($a->{secret}, 6);
unlike($dump, qr/\Q$raw\E/, 'nor its base64');

pay();
ok($t->poll(5, sub { received('/hook/a') && received('/hook/b') }),
	'both endpoints get the payment');
is(sw_verify($a->{secret}, received('/hook/a')), 'ok',
	'signed with the secret the row seals');

###############################################################################
# rotation through the API

$r = bearer($key, 'POST', "/v1/webhook_endpoints/$b->{id}/rotate_secret");
my $b2 = $r->{json}{data}{secret} // '';
like($b2, qr{^whsec_}, 'a rotated secret is shown once');
is($t->psql("SELECT count(*) FROM webhook_endpoints WHERE id = '$b->{id}' "
	. "AND secret LIKE 'pf1.k1.%' AND previous_secret LIKE 'pf1.k1.%'"), 1,
	'the new and the previous secret are both sealed');

###############################################################################
# a ciphertext moved to another row does not open

my $c = endpoint('c');
$t->psql("UPDATE webhook_endpoints SET secret = "
	. "(SELECT secret FROM webhook_endpoints WHERE id = '$a->{id}') "
	. "WHERE id = '$c->{id}'");
http_request('DELETE', '/_receiver/requests', port => $rport);
pay();
ok($t->poll(5, sub { received('/hook/a') }), 'a still gets its webhook');
ok($t->poll(5, sub { $t->error_log
	=~ /signing secret of endpoint \Q$c->{id}\E does not open/ }),
	'the moved secret is refused, with a log line naming the endpoint');
is(scalar(received('/hook/c')), 0, 'and nothing is sent to that endpoint');
unlike($t->error_log, qr/pf1\.k1\.|whsec_/,
	'no secret or ciphertext in the log');
$t->psql("DELETE FROM webhook_endpoints WHERE id = '$c->{id}'");

###############################################################################
# a secret in the clear (written before payflow_kek) is sealed in the
# background, and still signs

# "payflow_reseal off": not by this node
conf("payflow_kek k1 file=%%TESTDIR%%/kek1;\n    payflow_reseal off;");
$t->reload;
$t->psql("UPDATE webhook_endpoints SET secret = '$a->{secret}' "
	. "WHERE id = '$a->{id}'");
sleep 3;
is(stored($a->{id}), $a->{secret},
	'payflow_reseal off: left in the clear by this node');

conf('payflow_kek k1 file=%%TESTDIR%%/kek1;');
$t->reload;
ok($t->poll(10, sub { stored($a->{id}) =~ /^pf1\.k1\./ }),
	'a secret in the clear is sealed by the workers');
ok(metric('payflow_secrets_resealed_total') >= 1, 'and counted');
is($t->psql("SELECT count(*) FROM audit_logs WHERE target_id = '$a->{id}' "
	. "AND action = 'webhook_endpoint.secret_resealed'"), 1,
	'audited as sealed, not as a rotation');

###############################################################################
# a new current KEK: every row wrapped again, online

conf("payflow_kek k1 file=%%TESTDIR%%/kek1;\n"
	. "    payflow_kek k2 file=%%TESTDIR%%/kek2 current;");
$t->reload;
ok($t->poll(15, sub { $t->psql("SELECT count(*) FROM webhook_endpoints "
	. "WHERE secret NOT LIKE 'pf1.k2.%' OR previous_secret NOT LIKE "
	. "'pf1.k2.%'") eq '0' }), 'every secret is wrapped under k2');
ok($t->poll(10, sub { metric('payflow_secrets_pending') == 0 }),
	'payflow_secrets_pending reads 0');

conf('payflow_kek k2 file=%%TESTDIR%%/kek2;');
$t->reload;
http_request('DELETE', '/_receiver/requests', port => $rport);
pay();
ok($t->poll(5, sub { received('/hook/a') }), 'k1 removed: deliveries go on');
is(sw_verify($a->{secret}, received('/hook/a')), 'ok',
	'signed with the same secret as before');

###############################################################################
# bad payflow_kek lines

sub refused {
	my ($keks) = @_;
	conf($keks);
	my ($rc, $out) = $t->test_config;
	return $rc ? $out : '';
}

like(refused('payflow_kek k9 file=%%TESTDIR%%/missing;'),
	qr/payflow_kek/, 'a missing key file stops nginx -t, naming it');
$t->write_file('short', "abcd\n");
like(refused('payflow_kek k9 file=%%TESTDIR%%/short;'),
	qr/payflow_kek: the key .* is not 64 hex digits/, 'so does a short key');
like(refused("payflow_kek k1 file=%%TESTDIR%%/kek1;\n"
	. "    payflow_kek k2 file=%%TESTDIR%%/kek2;"),
	qr/one must be "current"/, 'two keys, none current');
like(refused("payflow_kek k1 file=%%TESTDIR%%/kek1;\n"
	. "    payflow_kek k1 file=%%TESTDIR%%/kek2 current;"),
	qr/"k1" is duplicate/, 'one id twice');
conf('payflow_kek k2 file=%%TESTDIR%%/kek2;');

$t->stop;

# the test database is shared: endpoints sealed under this test's keys (its
# own, and those of earlier tests its workers sealed) are disabled, so that
# the next tests' workers, without these keys, never try to open them
$t->psql("UPDATE webhook_endpoints SET enabled = false, "
	. "disabled_reason = 'disabled' "
	. "WHERE secret LIKE 'pf1.%' OR previous_secret LIKE 'pf1.%'");

# payments this test's keys sealed (its own, and those of earlier tests its
# workers sealed) keep no details the next tests' workers could not open
$t->psql("UPDATE payments SET customer = NULL, customer_key = NULL, "
	. "customer_index = NULL WHERE customer_key IS NOT NULL");
