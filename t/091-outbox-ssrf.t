#!/usr/bin/perl

# The outbox's SSRF guard, as in production (payflow_outbox_allow_private
# off): endpoints whose address is loopback, private, link-local, CGNAT,
# unspecified or IPv4-mapped are refused at creation, by address or by
# what their name resolves to; live-mode endpoints need https; and at
# delivery, an endpoint that has come to point at such an address (its
# name now resolving there) is never connected to: the receiver on
# 127.0.0.1 gets nothing, the attempt says why.  Both checks read an IPv4
# literal as libcurl connects to it: the same table of forms (decimal,
# octal, hex, short, one number, IPv4-mapped IPv6) is refused at creation
# and never connected to at delivery.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua->plan(29);

$t->write_file_expand('nginx.conf', <<'EOF2');

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

    payflow_outbox_interval 200ms;
    payflow_outbox_timeout 1s;
    payflow_outbox_retries 1s;

    lua_shared_dict receiver 4m;

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

EOF2

$t->run;

my $rport = $t->port('8094');

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'ssrf' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'admin' });
my $key = $r->{json}{data}{secret};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'live', role => 'admin' });
my $live = $r->{json}{data}{secret};

# (refund.failed: the endpoints accepted here are never sent to)
sub create {
	my ($url, $k) = @_;
	my $r = bearer($k // $key, 'POST', '/v1/webhook_endpoints',
		{ url => $url, events => ['refund.failed'] });
	return join ' ', $r->{status} // 'none',
		$r->{json}{error}{code} // $r->{json}{data}{object} // '-';
}

for my $url ("http://127.0.0.1:$rport/hook/ok", 'http://localhost/x',
	'https://10.1.2.3/x', 'https://172.16.0.1/x', 'https://192.168.1.1/x',
	'https://169.254.169.254/latest/meta-data', 'https://100.64.0.1/x',
	'https://0.0.0.0/x', 'https://[::1]/x', 'https://[fe80::1]/x',
	'https://[::ffff:127.0.0.1]/x', 'https://224.0.0.1/x',
	'https://[64:ff9b::7f00:1]/x', 'https://[2002:7f00:1::1]/x',
	'https://2130706433/x', 'http://0177.0.0.1:8095/x', 'http://012.0.0.1/',
	'https://0x7f.0.0.1/x', 'https://0x7f000001/x', 'https://127.1/x',
	'https://017700000001/x', 'https://0300.0250.0.1/x',
	'https://[::ffff:7f00:1]/x', 'https://0xa.1/x')
{
	is(create($url), '400 url_not_allowed', "refused: $url");
}

is(create('https://93.184.216.34/hook'), '200 webhook_endpoint',
	'a public address is accepted');
is(create('http://93.184.216.34/hook', $live), '400 url_invalid',
	'a live-mode endpoint must use https');

# an endpoint that has come to point at the receiver on 127.0.0.1, as a
# name rebound to a private address would
# (and every other form of it, written past the creation check)
my @forms = ("127.0.0.1:$rport", "0177.0.0.1:$rport", "0x7f.0.0.1:$rport",
	"127.1:$rport", "2130706433:$rport", "0x7f000001:$rport",
	"[::ffff:127.0.0.1]:$rport");
for my $form (@forms) {
	$t->psql("INSERT INTO webhook_endpoints (tenant_id, livemode, url, "
		. "events, secret) VALUES ('$tenant', false, "
		. "'http://$form/hook/ok', '{*}', 'whsec_" . ('A' x 43) . "=')");
}
bearer($key, 'POST', '/v1/payments', { amount => 2000, currency => 'usd' });

ok($t->poll(10, sub { $t->psql("SELECT count(DISTINCT d.endpoint_id) "
	. "FROM webhook_attempts a JOIN webhook_deliveries d "
	. "ON d.id = a.delivery_id WHERE a.error LIKE '%not allowed%'")
	== @forms }),
	'the delivery to every form is refused at connect time')
	or diag($t->psql("SELECT e.url, a.error FROM webhook_attempts a "
	. "JOIN webhook_deliveries d ON d.id = a.delivery_id "
	. "JOIN webhook_endpoints e ON e.id = d.endpoint_id"));
my $got = http_parse(http_get('/_receiver/requests', port => $rport));
is(scalar @{$got->{json} // [1]}, 0, 'the receiver got nothing');
like(http_parse(http_get('/metrics'))->{body},
	qr/^payflow_outbox_deliveries_total\{result="refused"\} [1-9]/m,
	'counted as refused');
