#!/usr/bin/perl

# Webhooks to tenants: the endpoints API, the event log, the transactional
# outbox and its delivery workers, against a receiver in the same nginx
# (t/emulators/receiver.lua).  Deliveries are checked with the Standard
# Webhooks reference library from the npm registry (t/node/sw-verify.js),
# not only with our own code: the event's body, the stable webhook-id, the
# request id that caused it; retries after 500 and after a timeout; a
# redirect is no success; 410 disables the endpoint, and so does failing
# for longer than payflow_outbox_disable_after; redelivery; rotation (two
# signatures, both verify); a rolled-back change delivers nothing; workers
# killed with deliveries pending lose none; tenants see only their own.

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

$t->plan(68);

$t->write_file_expand('nginx.conf', <<'EOF');

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

    # the receiver is on 127.0.0.1; retries shortened by configuration
    payflow_outbox_allow_private on;
    payflow_outbox_interval 200ms;
    payflow_outbox_timeout 1s;
    payflow_outbox_retries 1s 1s 1s;
    payflow_outbox_disable_after 2s;

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

$t->run;

my $rport = $t->port('8094');
my $hook = "http://127.0.0.1:$rport/hook";

sub received {
	my $r = http_parse(http_get('/_receiver/requests', port => $rport));
	return $r->{json} // [];
}

sub tenant_key {
	my ($name, $role) = @_;
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => $name });
	my $tenant = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
		{ mode => 'test', role => $role // 'admin' });
	return ($tenant, $r->{json}{data}{secret});
}

my ($tenant, $key) = tenant_key('hooks out');

sub tapi { bearer($key, @_) }

sub err { my $r = shift; join ' ', $r->{status} // 'none',
	$r->{json}{error}{code} // '-', $r->{json}{error}{param} // '-' }

sub sw_verify {
	my ($secret, @d) = @_;
	$t->write_file('deliveries.json', encode_json([ map { {
		id => $_->{id}, timestamp => $_->{timestamp},
		signature => $_->{signature}, body => $_->{body} } } @d ]));
	my $out = `node $node_dir/sw-verify.js '$secret' $t->{dir}/deliveries.json`;
	return join ' ', split /\n/, $out;
}

sub pay {
	my ($amount) = @_;
	return tapi('POST', '/v1/payments', { amount => $amount // 2000,
		currency => 'usd' });
}

###############################################################################
# the endpoints API

my $r = tapi('POST', '/v1/webhook_endpoints', { url => "$hook/ok",
	events => [ 'payment.succeeded', 'refund.created' ],
	description => 'orders' });
my $ep = $r->{json}{data};
is($r->{status}, 200, 'an endpoint is created');
like($ep->{secret} // '', qr{^whsec_[A-Za-z0-9+/]{43}=$},
	'with a whsec_ secret of 32 random bytes');
$r = tapi('GET', "/v1/webhook_endpoints/$ep->{id}");
is(join(' ', $r->{status}, exists $r->{json}{data}{secret} ? 'secret' : '-',
	"@{$r->{json}{data}{events}}"),
	'200 - payment.succeeded refund.created', 'shown without its secret');

is(err(tapi('POST', '/v1/webhook_endpoints', { events => ['*'] })),
	'400 parameter_missing url', 'url is required');
is(err(tapi('POST', '/v1/webhook_endpoints', { url => "$hook/ok" })),
	'400 parameter_missing events', 'events are required');
is(err(tapi('POST', '/v1/webhook_endpoints', { url => 'ftp://x/y',
	events => ['*'] })), '400 url_invalid url', 'ftp is refused');
is(err(tapi('POST', '/v1/webhook_endpoints', { url => 'https://u:p@x/y',
	events => ['*'] })), '400 url_invalid url', 'credentials are refused');
is(err(tapi('POST', '/v1/webhook_endpoints', { url => "$hook/ok",
	events => ['payment.exploded'] })), '400 parameter_invalid events',
	'unknown event types are refused');
is(err(tapi('POST', '/v1/webhook_endpoints', { url => "$hook/ok",
	events => ['*'], secret => 'x' })), '400 parameter_unknown secret',
	'unknown fields are refused');

my ($other_tenant, $other_key) = tenant_key('someone else');
is(bearer($other_key, 'GET', "/v1/webhook_endpoints/$ep->{id}")->{status},
	404, "another tenant cannot see the endpoint");
my (undef, $dev_key) = tenant_key('developer', 'developer');
is(bearer($dev_key, 'POST', '/v1/webhook_endpoints', { url => "$hook/ok",
	events => ['*'] })->{status}, 403, 'a developer key cannot add one');

###############################################################################
# delivery, as the Standard Webhooks library checks it

$r = pay();
my $pid = $r->{json}{data}{id};
my $rid = $r->{headers}{'x-request-id'};
ok($t->poll(5, sub { grep { $_->{uri} eq '/hook/ok' } @{received()} }),
	'the payment\'s webhook arrives');
my @got = grep { $_->{uri} eq '/hook/ok' } @{received()};
is(scalar @got, 1, 'one: the endpoint wants payment.succeeded only');
my $d = $got[0];
my $body = decode_json($d->{body});
is(join(' ', $body->{type}, $body->{data}{object}{id},
	$body->{data}{object}{status}, $body->{object}),
	"payment.succeeded $pid succeeded event", 'the event, with its payment');
is(sw_verify($ep->{secret}, $d), 'ok',
	'the standardwebhooks package verifies it');
is(sw_verify('whsec_' . 'A' x 43 . '=', $d), 'No matching signature found',
	'and refuses it under another secret');
like($d->{id}, qr/^msg_/, 'webhook-id is the delivery\'s');
is($d->{request_id}, $rid, 'X-Request-Id is the request that paid');
is($d->{content_type}, 'application/json', 'JSON');

# the event log
$r = tapi('GET', "/v1/events/$body->{id}");
is(join(' ', $r->{status}, $r->{json}{data}{type},
	$r->{json}{data}{data}{object}{status}),
	'200 payment.succeeded succeeded', 'GET /v1/events/{id}: its snapshot');
$r = tapi('GET', '/v1/events?limit=3');
is(join(' ', map { $_->{type} } @{$r->{json}{data}{data}}),
	'payment.succeeded payment.processing payment.created',
	'GET /v1/events: newest first');
is(tapi('GET', '/v1/events?type=payment.created&limit=100')->{json}{data}
	{data}[0]{type}, 'payment.created', 'filtered by type');
is(err(tapi('GET', '/v1/events?type=nope')), '400 parameter_invalid type',
	'an unknown type is refused');
is(bearer($other_key, 'GET', "/v1/events/$body->{id}")->{status}, 404,
	'another tenant cannot see it');
$r = tapi('GET', "/v1/events/$body->{id}/deliveries");
my $dl = $r->{json}{data}{data}[0];
is(join(' ', $dl->{id}, $dl->{status}, $dl->{attempts}[0]{status_code}),
	"$d->{id} succeeded 200", 'its delivery, attempt by attempt');

# redelivery: the same webhook-id again
$r = tapi('POST', "/v1/events/$body->{id}/redeliver", {});
is($r->{status}, 200, 'redeliver');
ok($t->poll(5, sub { (grep { $_->{id} eq $d->{id} } @{received()}) == 2 }),
	'the same delivery arrives again, same webhook-id');

# at most once a minute per event and endpoint: ten more calls, no more POSTs
my @again = map { tapi('POST', "/v1/events/$body->{id}/redeliver", {}) }
	1 .. 10;
is(join(' ', map { $_->{status} // 0 } @again), join(' ', (429) x 10),
	'redelivering again within the minute: 429');
is($again[0]{json}{error}{code}, 'redelivery_too_soon',
	'429 redelivery_too_soon');
like($again[0]{headers}{'retry-after'} // '', qr/^([1-9]|[1-5][0-9]|60)$/,
	'with Retry-After in seconds');
select undef, undef, undef, 1;
is(scalar(grep { $_->{id} eq $d->{id} } @{received()}), 2,
	'the receiver got nothing more');

$t->psql("UPDATE webhook_deliveries SET redelivered_at = redelivered_at "
	. "- interval '61 seconds' WHERE event_id = '$body->{id}'");
$r = tapi('POST', "/v1/events/$body->{id}/redeliver", {});
is($r->{status}, 200, 'a minute later: redelivered') or diag($r->{raw});
ok($t->poll(5, sub { (grep { $_->{id} eq $d->{id} } @{received()}) == 3 }),
	'and it arrives once more');

###############################################################################
# failures: 500, a timeout, a redirect, 410, and for too long

my %ep;
for my $what (qw(500 slow redirect 410)) {
	$r = tapi('POST', '/v1/webhook_endpoints', { url => "$hook/$what",
		events => ['payment.succeeded'] });
	$ep{$what} = $r->{json}{data}{id};
}
$r = pay();
my $evt = tapi('GET', '/v1/events?type=payment.succeeded&limit=1')
	->{json}{data}{data}[0]{id};

sub deliveries_of {
	my ($event, $endpoint) = @_;
	my $r = tapi('GET', "/v1/events/$event/deliveries");
	my ($x) = grep { $_->{endpoint} eq $endpoint }
		@{$r->{json}{data}{data} // []};
	return $x // {};
}

ok($t->poll(12, sub { (deliveries_of($evt, $ep{500})->{status} // '')
	eq 'failed' }), 'a 500 endpoint: given up in the end');
my $x = deliveries_of($evt, $ep{500});
my @codes = map { $_->{status_code} // '-' } @{$x->{attempts}};
ok(@codes >= 2 && !grep({ $_ ne '500' } @codes), 'after the first attempt '
	. "and retries (@codes), until it failed for longer than disable_after");
$r = tapi('GET', "/v1/webhook_endpoints/$ep{500}");
like(join(' ', $r->{json}{data}{status}, $r->{json}{data}{disabled_reason}
	// '-'), qr/^disabled every delivery failed since/,
	'and the endpoint is disabled');
is($t->psql("SELECT count(*) FROM audit_logs WHERE target_id = "
	. "'$ep{500}' AND action = 'webhook_endpoint.disabled'"), 1,
	'with an audit event');

ok($t->poll(12, sub { @{deliveries_of($evt, $ep{slow})->{attempts} // []}
	>= 2 }), 'a slow endpoint: retried');
like(deliveries_of($evt, $ep{slow})->{attempts}[0]{error} // '',
	qr/timed? ?out/i, 'after a timeout');

ok($t->poll(8, sub { @{deliveries_of($evt, $ep{redirect})->{attempts}
	// []} >= 1 }), 'a redirect: attempted');
$x = deliveries_of($evt, $ep{redirect});
is(join(' ', $x->{attempts}[0]{status_code},
	$x->{status} eq 'succeeded' ? 'succeeded' : 'not'), '302 not',
	'not followed, not a success');

ok($t->poll(8, sub { (deliveries_of($evt, $ep{410})->{status} // '')
	eq 'failed' }), 'a 410 endpoint');
$r = tapi('GET', "/v1/webhook_endpoints/$ep{410}");
is(join(' ', $r->{json}{data}{status}, $r->{json}{data}{disabled_reason}),
	'disabled the endpoint answered 410 Gone', 'is disabled at once');
is(scalar(grep { $_->{uri} eq '/hook/410' } @{received()}), 1,
	'after one attempt');

# a disabled endpoint gets nothing more; enabling it again resumes
pay();
sleep 1;
is(scalar(grep { $_->{uri} eq '/hook/410' } @{received()}), 1,
	'a disabled endpoint gets no more');
$r = tapi('PATCH', "/v1/webhook_endpoints/$ep{410}", { enabled => JSON::PP::true,
	url => "$hook/ok" });
is(join(' ', $r->{status}, $r->{json}{data}{status}, $r->{json}{data}{url}),
	"200 enabled $hook/ok", 'PATCH: enabled again, another url');
is(err(tapi('PATCH', "/v1/webhook_endpoints/$ep{410}", { enabled => 1 })),
	'400 parameter_invalid enabled', 'enabled must be a boolean');
for my $id (@ep{qw(500 slow redirect 410)}) {
	tapi('DELETE', "/v1/webhook_endpoints/$id");
}
$r = tapi('DELETE', "/v1/webhook_endpoints/$ep{slow}");
is($r->{status}, 404, 'DELETE: gone');

###############################################################################
# rotation: both secrets sign during the grace period

$r = tapi('POST', "/v1/webhook_endpoints/$ep->{id}/rotate_secret", {});
my $new = $r->{json}{data}{secret};
ok($new && $new ne $ep->{secret}, 'rotate_secret: a new secret');
my $before = @{received()};
pay();
ok($t->poll(5, sub { grep { $_->{uri} eq '/hook/ok' }
	@{received()}[$before .. $#{received()}] }), 'the next delivery');
($d) = grep { $_->{uri} eq '/hook/ok' } reverse @{received()};
is(scalar(split / /, $d->{signature}), 2, 'carries two signatures');
is(sw_verify($new, $d) . ' ' . sw_verify($ep->{secret}, $d), 'ok ok',
	'each verifies with its secret');

###############################################################################
# only what committed is delivered

$r = tapi('POST', '/v1/refunds', { payment => $pid, amount => 500 });
is($r->{status}, 200, 'a refund');
ok($t->poll(5, sub { grep { ($_->{body} // '') =~ /refund\.created/ }
	@{received()} }), 'its refund.created is delivered');
my $refunds = grep { ($_->{body} // '') =~ /refund\.created/ } @{received()};
is(err(tapi('POST', '/v1/refunds', { payment => $pid, amount => 999999 })),
	'400 amount_too_large amount', 'a refund above the payment is refused');

# a refund written, its delivery queued with it, and all rolled back
my $in_txn = $t->psql("BEGIN; INSERT INTO refunds (id, tenant_id, livemode, "
	. "payment_id, amount, currency) VALUES ('re_rolledback00000000000001', "
	. "'$tenant', false, '$pid', 100, 'USD'); SELECT count(*) FROM "
	. "webhook_deliveries d JOIN payment_events e ON e.id = d.event_id "
	. "WHERE e.refund_id = 're_rolledback00000000000001'; ROLLBACK;");
like($in_txn, qr/^1$/m, 'inside the transaction, its delivery is queued');
sleep 1;
is(scalar(grep { ($_->{body} // '') =~ /refund\.created/ } @{received()}),
	$refunds, 'rolled back: never delivered');

###############################################################################
# workers killed with deliveries pending lose none

http_parse(http_request('DELETE', '/_receiver/requests', port => $rport));
tapi('PATCH', "/v1/webhook_endpoints/$ep->{id}", { url => "$hook/wait" });
my @pids;
for (1 .. 20) {
	push @pids, pay()->{json}{data}{id};
}
ok($t->psql("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = "
	. "'$ep->{id}' AND status = 'pending'") > 0,
	'deliveries pending (the receiver takes 300 ms each)');
my @workers = split /\n/, `pgrep -P $t->{pid}` // '';
kill 'KILL', @workers;
ok($t->poll(30, sub {
	my %seen;
	for (@{received()}) {
		my $b = eval { decode_json($_->{body}) } or next;
		$seen{$b->{data}{object}{id}} = 1;
	}
	return !grep { !$seen{$_} } @pids;
}, 0.5), 'every payment\'s webhook arrives though the workers were killed');
ok($t->poll(20, sub { $t->psql("SELECT count(*) FROM webhook_deliveries "
	. "WHERE status <> 'succeeded' AND endpoint_id = '$ep->{id}'") == 0 }),
	'and every delivery is recorded as succeeded (those sent when the '
	. 'worker died: again, once their lease ran out)');

# a 2xx with a long body is a success
$r = tapi('POST', '/v1/webhook_endpoints', { url => "$hook/big",
	events => ['payment.succeeded'] });
my $big = $r->{json}{data}{id};
pay();
ok($t->poll(5, sub { $t->psql("SELECT count(*) FROM webhook_deliveries "
	. "WHERE endpoint_id = '$big' AND status = 'succeeded'") == 1 }),
	'a 200 with a 10 KB body is a success');

###############################################################################
# metrics and logs

my $m = http_parse(http_get('/metrics'))->{body} // '';
like($m, qr/^payflow_outbox_deliveries_total\{result="succeeded"\} [1-9]/m,
	'deliveries counted');
like($m, qr/^payflow_outbox_deliveries_total\{result="failed"\} [1-9]/m,
	'and failures');
like($m, qr/^payflow_outbox_backlog \d+$/m, 'the backlog');
like($m, qr/^payflow_payment_transitions_total\{type="payment\.succeeded",source="api"\} [1-9]/m,
	'payment transitions, counted from the event log');
like($m, qr/^payflow_http_requests_total\{route="\/v1\/webhook_endpoints\/\{id\}",method="PATCH",status="200"\} [1-9]\d*$/m,
	'PATCH counted by route template');

SKIP: {
	skip 'promtool not installed (package prometheus)', 1
		unless -x '/usr/bin/promtool';
	$t->write_file('metrics.txt', $m);
	my $out = `/usr/bin/promtool check metrics < $t->{dir}/metrics.txt 2>&1`;
	is($? >> 8, 0, 'promtool check metrics accepts them') or diag($out);
}

$t->stop;

my $log = $t->read_file('error.log');
my @leaks = grep { index($log, $_) >= 0 } ($ep->{secret}, $new);
is("@leaks", '', 'no signing secret in the error log');
