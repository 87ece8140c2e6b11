#!/usr/bin/perl

# The operator's admin API under /v1/admin: only the admin credential opens
# it (a missing or wrong one, or a tenant's API key, is a 401; the admin
# credential in turn is no tenant key); tenants are created, read and
# listed newest first with cursor pagination; keys are created for a tenant
# in either mode, listed, read, revoked and rolled; bad bodies and query
# parameters are refused with the field they concern and change nothing;
# every change leaves an audit row naming the operator, the client address
# and the request id.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(109);

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

my $JSON = JSON::PP->new->canonical;

# $body: a reference is sent as JSON, a string as it is
sub request { api(@_) }

sub admin { $t->admin_api(@_) }

# status, error type, code and param in one string, e.g.
# "400 invalid_request_error parameter_unknown color"
sub error_of {
	my ($r) = @_;
	my $e = $r->{json}{error} || {};
	return join ' ', grep { defined } $r->{status}, $e->{type}, $e->{code},
		$e->{param};
}

###############################################################################
# who may enter

is(error_of(request(undef, 'GET', '/v1/admin/tenants')),
	'401 authentication_error authorization_missing',
	'no credential: 401 authorization_missing');

my $wrong = 'pf_admin_' . ('x' x 40);
is(error_of(request("Bearer $wrong", 'GET', '/v1/admin/tenants')),
	'401 authentication_error admin_key_invalid',
	'wrong admin credential: 401 admin_key_invalid');

is(error_of(request('Bearer ' . substr($t->admin_secret, 0, -1),
	'GET', '/v1/admin/tenants')),
	'401 authentication_error admin_key_invalid',
	'admin credential one character short: 401 admin_key_invalid');

my $r = request("Bearer $wrong", 'GET', '/v1/admin/tenants');
is($r->{headers}{'www-authenticate'},
	'Bearer realm="payflow", error="invalid_token"',
	'wrong admin credential: WWW-Authenticate invalid_token');

is(error_of(request("Bearer $wrong", 'POST', '/v1/admin/tenants',
	{ name => 'intruder' })),
	'401 authentication_error admin_key_invalid',
	'wrong admin credential cannot create a tenant');
is($t->psql("SELECT count(*) FROM tenants WHERE name = 'intruder'"), 0,
	'no tenant created by the intruder');

###############################################################################
# tenants: create and read

$r = admin('POST', '/v1/admin/tenants', { name => 'Acme Ltd' });
is($r->{status}, 200, 'tenant create: 200') or diag($r->{raw});
my $tenant = $r->{json}{data} || {};
like($tenant->{id} // '', qr/^ten_[0-9A-Za-z]{24}$/,
	'tenant create: id ten_ + 24 base62');
is($tenant->{object}, 'tenant', 'tenant create: object tenant');
is($tenant->{name}, 'Acme Ltd', 'tenant create: name');
is($tenant->{status}, 'active', 'tenant create: status active');
ok(abs(($tenant->{created} // 0) - time) < 60, 'tenant create: created now');
my $tenant_rid = $r->{headers}{'x-request-id'};

$r = admin('GET', "/v1/admin/tenants/$tenant->{id}");
is($r->{status}, 200, 'tenant get: 200') or diag($r->{raw});
is_deeply($r->{json}{data}, $tenant, 'tenant get: the created tenant');

$r = admin('GET', '/v1/admin/tenants/ten_000000000000000000000000');
is(error_of($r), '404 invalid_request_error resource_missing id',
	'unknown tenant: 404 resource_missing');

# a tenant key opens nothing here, the admin credential nothing there
$r = admin('POST', "/v1/admin/tenants/$tenant->{id}/api_keys",
	{ role => 'owner' });
my $owner = $r->{json}{data}{secret} // '';

is(error_of(request("Bearer $owner", 'GET', '/v1/admin/tenants')),
	'401 authentication_error admin_key_invalid',
	'a tenant owner key on /v1/admin: 401 admin_key_invalid');
is(error_of(request("Bearer $owner", 'GET',
	"/v1/admin/tenants/$tenant->{id}")),
	'401 authentication_error admin_key_invalid',
	'a tenant owner key on its own tenant\'s admin URL: 401');
is(error_of(request('Bearer ' . $t->admin_secret, 'GET', '/v1/me')),
	'401 authentication_error api_key_invalid',
	'the admin credential on /v1/me: 401 api_key_invalid');

###############################################################################
# tenants: the list, newest first, a page at a time

my @mine;
for my $n (1 .. 5) {
	$r = admin('POST', '/v1/admin/tenants', { name => "page tenant $n" });
	push @mine, $r->{json}{data}{id} // "missing $n";
}
@mine = reverse @mine;

# every tenant, as the database orders them: newest first
my @all = split /\n/, $t->psql('SELECT id FROM tenants '
	. 'ORDER BY created_at DESC, id DESC');
is_deeply([ @all[0 .. 4] ], \@mine, 'the five new tenants are the newest');

sub page {
	my ($query) = @_;
	my $r = admin('GET', "/v1/admin/tenants?$query");
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	my $list = $r->{json}{data} || {};
	return ([ map { $_->{id} } @{$list->{data} || []} ], $list);
}

my ($ids, $list) = page('limit=2');
is($list->{object}, 'list', 'list: object list');
is_deeply($ids, [ @mine[0, 1] ], 'page 1: the two newest');
is($list->{has_more}, JSON::PP::true, 'page 1: has_more');

($ids, $list) = page("limit=2&starting_after=$mine[1]");
is_deeply($ids, [ @mine[2, 3] ], 'page 2: the next two');
is($list->{has_more}, JSON::PP::true, 'page 2: has_more');

# walking on to the end meets every tenant once, in order
my @walked = @mine[0 .. 3];
my ($pages, $last) = (2, $list);
my $cursor = $mine[3];
while ($last->{has_more} && $pages < 1000) {
	($ids, $last) = page("limit=2&starting_after=$cursor");
	last unless @$ids;
	push @walked, @$ids;
	$cursor = $ids->[-1];
	$pages++;
}
is_deeply(\@walked, \@all, "limit=2 pages cover all " . scalar(@all)
	. " tenants in order ($pages pages)");
is($last->{has_more}, JSON::PP::false, 'last page: has_more false');

# and back again
($ids, $list) = page("limit=2&ending_before=$mine[4]");
is_deeply($ids, [ @mine[2, 3] ], 'ending_before page 3: page 2 again');
is($list->{has_more}, JSON::PP::true, 'ending_before: has_more (newer)');

($ids, $list) = page("limit=2&ending_before=$mine[2]");
is_deeply($ids, [ @mine[0, 1] ], 'ending_before page 2: page 1 again');
is($list->{has_more}, JSON::PP::false, 'ending_before page 2: no newer');

($ids, $list) = page('limit=100');
is(scalar(@$ids), @all > 100 ? 100 : scalar(@all), 'limit=100 accepted');
($ids, $list) = page('');
is(scalar(@$ids), @all > 10 ? 10 : scalar(@all), 'default limit 10');

for my $bad ('0', '101', 'abc', '-1', '') {
	is(error_of(admin('GET', "/v1/admin/tenants?limit=$bad")),
		'400 invalid_request_error parameter_invalid limit',
		"limit=$bad: 400 parameter_invalid limit");
}

###############################################################################
# request bodies that are refused, creating nothing

my $count = $t->psql('SELECT count(*) FROM tenants');
my $audit_count = $t->psql('SELECT count(*) FROM audit_logs');

for my $case (
	[ '{"name": "x"',                'invalid_json', 'truncated JSON' ],
	[ 'name=x',                      'invalid_json', 'a form body' ],
	[ '{"name": "a", "name": "b"}',  'invalid_json', 'a duplicate key' ],
	[ '["name", "x"]',               'invalid_json', 'an array' ],
	[ '"x"',                         'invalid_json', 'a string' ],
	[ '{"name": "x", "extra": ' . ('[' x 40) . (']' x 40) . '}',
	                                 'invalid_json', 'nesting 40 deep' ],
) {
	my ($body, $code, $what) = @$case;
	is(error_of(admin('POST', '/v1/admin/tenants', $body)),
		"400 invalid_request_error $code",
		"tenant create, $what: $code");
}

is(error_of(admin('POST', '/v1/admin/tenants',
	{ name => 'x', color => 'red' })),
	'400 invalid_request_error parameter_unknown color',
	'tenant create, unknown field: parameter_unknown color');
is(error_of(admin('POST', '/v1/admin/tenants', { name => 5 })),
	'400 invalid_request_error parameter_invalid name',
	'tenant create, name a number: parameter_invalid name');
is(error_of(admin('POST', '/v1/admin/tenants', { name => '' })),
	'400 invalid_request_error parameter_invalid name',
	'tenant create, empty name: parameter_invalid name');
is(error_of(admin('POST', '/v1/admin/tenants', { name => 'n' x 201 })),
	'400 invalid_request_error parameter_invalid name',
	'tenant create, 201-byte name: parameter_invalid name');
is(error_of(admin('POST', '/v1/admin/tenants', {})),
	'400 invalid_request_error parameter_missing name',
	'tenant create, no name: parameter_missing name');
is(error_of(admin('POST', '/v1/admin/tenants')),
	'400 invalid_request_error parameter_missing name',
	'tenant create, no body: parameter_missing name');

# the depth limit counts levels, not bytes: shallow nesting is parsed
is(error_of(admin('POST', '/v1/admin/tenants', { name => [[['x']]] })),
	'400 invalid_request_error parameter_invalid name',
	'tenant create, name nested 3 deep: parsed, parameter_invalid name');

my $keys_url = "/v1/admin/tenants/$tenant->{id}/api_keys";

for my $case (
	[ { mode => 'prod' },               'mode' ],
	[ { mode => JSON::PP::true },       'mode' ],
	[ { role => 'root' },               'role' ],
	[ { role => 1 },                    'role' ],
	[ { read_only => 'yes' },           'read_only' ],
	[ { description => 'd' x 201 },     'description' ],
	[ { description => 7 },             'description' ],
	[ { expires_at => time - 10 },      'expires_at' ],
	[ { expires_at => 'tomorrow' },     'expires_at' ],
) {
	my ($body, $param) = @$case;
	my $what = $JSON->encode($body);
	$what = substr($what, 0, 40) . '...' if length $what > 40;
	is(error_of(admin('POST', $keys_url, $body)),
		"400 invalid_request_error parameter_invalid $param",
		"key create $what: parameter_invalid $param");
}

is(error_of(admin('POST', $keys_url, { role => 'viewer', scope => 'all' })),
	'400 invalid_request_error parameter_unknown scope',
	'key create, unknown field: parameter_unknown scope');

is($t->psql('SELECT count(*) FROM tenants'), $count,
	'no tenant created by the refused requests');
is($t->psql("SELECT count(*) FROM api_keys WHERE tenant_id = "
	. "'$tenant->{id}'"), 1, 'no key created by the refused requests');
is($t->psql('SELECT count(*) FROM audit_logs'), $audit_count,
	'no audit row written by the refused requests');

###############################################################################
# keys of a tenant, made by the operator

$r = admin('POST', $keys_url, { mode => 'live', role => 'viewer',
	description => 'live reporting' });
my $key_rid = $r->{headers}{'x-request-id'};
is($r->{status}, 200, 'live key create: 200') or diag($r->{raw});
my $live = $r->{json}{data} || {};
like($live->{id} // '', qr/^key_[0-9A-Za-z]{24}$/, 'live key: id');
is($live->{object}, 'api_key', 'live key: object api_key');
is($live->{tenant_id}, $tenant->{id}, 'live key: tenant');
is($live->{livemode}, JSON::PP::true, 'live key: livemode true');
is($live->{prefix}, 'pf_live_', 'live key: prefix pf_live_');
is($live->{role}, 'viewer', 'live key: role');
is($live->{read_only}, JSON::PP::false, 'live key: not read-only');
is($live->{description}, 'live reporting', 'live key: description');
like($live->{secret} // '', qr/^pf_live_[0-9A-Za-z]{38}$/,
	'live key: secret pf_live_ + 38 base62');
is($live->{last4}, substr($live->{secret} // '', -4),
	'live key: last4 is the end of the secret');
is($live->{revoked_at}, undef, 'live key: not revoked');
is($live->{expires_at}, undef, 'live key: no expiry');

$r = request("Bearer $live->{secret}", 'GET', '/v1/me');
is($r->{json}{data}{livemode}, JSON::PP::true,
	'the live key authenticates as live');
is($r->{json}{data}{tenant_id}, $tenant->{id},
	'the live key authenticates for its tenant');

$r = admin('POST', $keys_url, {});
my $test = $r->{json}{data} || {};
is($test->{livemode}, JSON::PP::false, 'key with no mode: test');
is($test->{role}, 'developer', 'key with no role: developer');

$r = admin('POST', $keys_url, { read_only => JSON::PP::true,
	expires_at => time + 3600 });
my $ro = $r->{json}{data} || {};
is($ro->{read_only}, JSON::PP::true, 'read-only key created');
ok(($ro->{expires_at} // 0) > time, 'key with expires_at');

$r = admin('GET', $keys_url);
is($r->{status}, 200, 'key list: 200') or diag($r->{raw});
is_deeply([ map { $_->{id} } @{$r->{json}{data}{data} || []} ],
	[ $ro->{id}, $test->{id}, $live->{id},
		$t->psql("SELECT id FROM api_keys WHERE tenant_id = "
			. "'$tenant->{id}' AND role = 'owner'") ],
	'key list: both modes, newest first');
ok(!grep({ exists $_->{secret} } @{$r->{json}{data}{data} || []}),
	'key list: no secret');

$r = admin('GET', "$keys_url?limit=2");
is($r->{json}{data}{has_more}, JSON::PP::true, 'key list limit=2: has_more');

$r = admin('GET', "/v1/admin/api_keys/$live->{id}");
is($r->{status}, 200, 'key get: 200') or diag($r->{raw});
my %shown = %$live;
delete $shown{secret};
is_deeply($r->{json}{data}, \%shown, 'key get: the key, without secret');

$r = admin('GET', '/v1/admin/api_keys/key_000000000000000000000000');
is(error_of($r), '404 invalid_request_error resource_missing id',
	'unknown key: 404 resource_missing');

# an unknown tenant has nothing to create or list
my $nobody = '/v1/admin/tenants/ten_000000000000000000000000/api_keys';
is(error_of(admin('POST', $nobody, {})),
	'404 invalid_request_error resource_missing id',
	'key create for an unknown tenant: 404');
$r = admin('GET', $nobody);
is(error_of($r), '404 invalid_request_error resource_missing id',
	'key list of an unknown tenant: 404') or diag($r->{raw});

###############################################################################
# revoke and roll by the operator

$r = admin('POST', "/v1/admin/api_keys/$test->{id}/revoke");
my $revoke_rid = $r->{headers}{'x-request-id'};
is($r->{status}, 200, 'revoke: 200') or diag($r->{raw});
ok($r->{json}{data}{revoked_at}, 'revoke: revoked_at set');
is(error_of(request("Bearer $test->{secret}", 'GET', '/v1/me')),
	'401 authentication_error api_key_revoked',
	'the revoked key: 401 api_key_revoked');

$r = admin('POST', "/v1/admin/api_keys/$live->{id}/roll",
	{ grace_period => 0 });
my $roll_rid = $r->{headers}{'x-request-id'};
is($r->{status}, 200, 'roll: 200') or diag($r->{raw});
my $rolled = $r->{json}{data} || {};
like($rolled->{secret} // '', qr/^pf_live_/, 'roll of a live key: live secret');
is($rolled->{livemode}, JSON::PP::true, 'roll of a live key: live');
is($rolled->{previous_key}{id}, $live->{id}, 'roll: previous_key');
is($rolled->{previous_key}{replaced_by}, $rolled->{id},
	'roll: previous_key.replaced_by');

is(error_of(admin('POST', "/v1/admin/api_keys/$live->{id}/roll")),
	'409 invalid_request_error api_key_not_active',
	'roll of a rolled key: 409 api_key_not_active');
is(error_of(admin('POST', "/v1/admin/api_keys/$live->{id}/roll",
	{ grace_period => 604801 })),
	'400 invalid_request_error parameter_invalid grace_period',
	'roll, grace_period over 7 days: parameter_invalid');

###############################################################################
# the audit log: who, from where, in which request

my $admin_id = 'admin_' . substr($t->admin_hash, 0, 16);

sub audit {
	my ($action, $target) = @_;
	return $t->psql("SELECT actor_type, actor_id, host(ip), request_id, "
		. "tenant_id FROM audit_logs WHERE action = '$action' "
		. "AND target_id = '$target'");
}

is(audit('tenant.created', $tenant->{id}),
	"admin|$admin_id|127.0.0.1|$tenant_rid|$tenant->{id}",
	'audit: tenant.created by the admin, with ip and request id');
is(audit('api_key.created', $live->{id}),
	"admin|$admin_id|127.0.0.1|$key_rid|$tenant->{id}",
	'audit: api_key.created (live)');
is(audit('api_key.revoked', $test->{id}),
	"admin|$admin_id|127.0.0.1|$revoke_rid|$tenant->{id}",
	'audit: api_key.revoked');
is(audit('api_key.rolled', $live->{id}),
	"admin|$admin_id|127.0.0.1|$roll_rid|$tenant->{id}",
	'audit: api_key.rolled');
is(audit('api_key.created', $rolled->{id} // ''),
	"admin|$admin_id|127.0.0.1|$roll_rid|$tenant->{id}",
	'audit: the rolled key\'s successor created in the same request');

is($t->psql("SELECT details->>'livemode' || ' ' || (details->>'role') "
	. "FROM audit_logs WHERE action = 'api_key.created' "
	. "AND target_id = '$live->{id}'"), 'true viewer',
	'audit: api_key.created details name mode and role');

###############################################################################

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
