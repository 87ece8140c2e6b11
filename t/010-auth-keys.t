#!/usr/bin/perl

# API key authentication: every way a credential can be wrong gets its own
# 401 code in the envelope with the right WWW-Authenticate challenge, before
# any routing; a static key from nginx.conf and a key created through the
# admin API both authenticate, the latter first through PostgreSQL and then
# from the shared-memory cache (proved by stopping PostgreSQL: the cached
# key still works, an uncached one gets 503); a key with expires_at stops
# working when it expires; the access log can name the tenant, key, mode
# and role of every request.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(106);

# whatever happens below, leave PostgreSQL running for the next test
my $pg_stopped = 0;
END {
	local $?;
	$t->pg_ctl('start') if $pg_stopped && $t;
}

# static keys: one per mode, and a test secret declared as a live key
my ($static, $static_hash) = $t->pf_key('test', '--tenant', 'ten_static',
	'--role', 'owner', '--id', 'key_static_owner');
my ($static_live, $static_live_hash) = $t->pf_key('live', '--tenant',
	'ten_static', '--role', 'viewer', '--read-only');
my ($mislabelled, $mislabelled_hash) = $t->pf_key('test', '--tenant',
	'ten_static', '--role', 'owner');

# well formed, right checksum, but declared nowhere
my ($unknown) = $t->pf_key('test', '--tenant', 'ten_static',
	'--role', 'owner');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    log_format payflow '\$payflow_request_id tenant=\$payflow_tenant_id '
                       'key=\$payflow_key_id mode=\$payflow_mode '
                       'role=\$payflow_role status=\$status';
    access_log %%TESTDIR%%/payflow.log payflow;

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               connect_timeout=2s query_timeout=3s;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    payflow_static_key $static_hash tenant=ten_static mode=test role=owner
                       id=key_static_owner;
    payflow_static_key $static_live_hash tenant=ten_static mode=live
                       role=viewer read_only;
    payflow_static_key $mislabelled_hash tenant=ten_static mode=live
                       role=owner;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

$t->run;

# request($authorization_value_or_undef, $method, $uri, $body, %opts)
sub request { api(@_) }

sub me {
	my ($secret, @headers) = @_;
	return request("Bearer $secret", 'GET', '/v1/me', undef,
		headers => \@headers);
}

sub admin { $t->admin_api(@_) }

my $CHALLENGE = 'Bearer realm="payflow"';
my $INVALID_TOKEN = 'Bearer realm="payflow", error="invalid_token"';

# status, error type and code, and the challenge of one failed request
sub refused {
	my ($r, $status, $code, $challenge, $name) = @_;
	my $type = $status == 401 ? 'authentication_error' : 'permission_error';

	is($r->{status}, $status, "$name: $status") or diag($r->{raw});
	is($r->{json}{success}, JSON::PP::false, "$name: success false");
	is($r->{json}{error}{type}, $type, "$name: type $type");
	is($r->{json}{error}{code}, $code, "$name: code $code");
	is($r->{headers}{'www-authenticate'}, $challenge,
		"$name: WWW-Authenticate "
		. (defined $challenge ? $challenge : 'absent'));
}

###############################################################################
# credentials that are missing or not a bearer token at all

refused(request(undef, 'GET', '/v1/me'),
	401, 'authorization_missing', $CHALLENGE, 'no Authorization');

refused(request('Basic dXNlcjpwYXNz', 'GET', '/v1/me'),
	401, 'authorization_invalid', $INVALID_TOKEN, 'Basic scheme');

refused(request('Bearer', 'GET', '/v1/me'),
	401, 'authorization_invalid', $INVALID_TOKEN, 'Bearer without a token');

# authentication runs before routing: nothing is learnt about paths
refused(request(undef, 'GET', '/v1/no_such_thing'),
	401, 'authorization_missing', $CHALLENGE,
	'unknown /v1 path without credentials');

###############################################################################
# bearer tokens that are not a valid key

refused(me('not-a-key'), 401, 'api_key_invalid', $INVALID_TOKEN,
	'junk token');

my $bad_checksum = substr($static, 0, -1)
	. (substr($static, -1) eq 'A' ? 'B' : 'A');
refused(me($bad_checksum), 401, 'api_key_invalid', $INVALID_TOKEN,
	'static key with its last checksum character changed');

refused(me(substr($static, 0, -1)), 401, 'api_key_invalid', $INVALID_TOKEN,
	'static key one character short');

refused(me($unknown), 401, 'api_key_invalid', $INVALID_TOKEN,
	'well-formed key that exists nowhere');

# the hash matches a static key, but that one is declared mode=live
refused(me($mislabelled), 401, 'api_key_invalid', $INVALID_TOKEN,
	'pf_test_ secret of a key declared mode=live');

###############################################################################
# static keys from nginx.conf

my $r = me($static);
is($r->{status}, 200, 'static test key: 200') or diag($r->{raw});
is($r->{json}{data}{object}, 'me', 'static test key: object me');
is($r->{json}{data}{credential}, 'static_key',
	'static test key: credential static_key');
is($r->{json}{data}{tenant_id}, 'ten_static', 'static test key: tenant');
is($r->{json}{data}{livemode}, JSON::PP::false,
	'static test key: livemode false');
is($r->{json}{data}{role}, 'owner', 'static test key: role owner');
is($r->{json}{data}{key_id}, 'key_static_owner',
	'static test key: key_id from id=');
is($r->{json}{data}{read_only}, JSON::PP::false,
	'static test key: not read-only');
is_deeply($r->{json}{data}{permissions}, ['read', 'write', 'manage'],
	'static test key: owner permissions');

$r = me($static_live);
is($r->{status}, 200, 'static live key: 200') or diag($r->{raw});
is($r->{json}{data}{livemode}, JSON::PP::true,
	'static live key: livemode true');
is($r->{json}{data}{role}, 'viewer', 'static live key: role viewer');
is($r->{json}{data}{read_only}, JSON::PP::true,
	'static live key: read-only');
like($r->{json}{data}{key_id} // '', qr/^key_\w+$/,
	'static live key: a key_id is derived when id= is absent');

###############################################################################
# keys created through the admin API, looked up in PostgreSQL

$r = admin('POST', '/v1/admin/tenants', { name => 'auth keys' });
is($r->{status}, 200, 'tenant created') or diag($r->{raw});
my $tenant = $r->{json}{data}{id} // '';

sub new_key {
	my (%body) = @_;
	my $r = admin('POST', "/v1/admin/tenants/$tenant/api_keys", \%body);
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	return $r->{json}{data} || {};
}

my $key = new_key(role => 'developer');
like($key->{secret} // '', qr/^pf_test_[0-9A-Za-z]{38}$/,
	'created key: secret is pf_test_ + 38 base62');

$r = me($key->{secret});
is($r->{status}, 200, 'created key: 200') or diag($r->{raw});
is($r->{json}{data}{credential}, 'api_key', 'created key: credential api_key');
is($r->{json}{data}{tenant_id}, $tenant, 'created key: its tenant');
is($r->{json}{data}{key_id}, $key->{id}, 'created key: its id');
is($r->{json}{data}{role}, 'developer', 'created key: role developer');
is($r->{json}{data}{livemode}, JSON::PP::false, 'created key: test mode');

# a valid secret of a revoked key
my $revoked = new_key();
$r = admin('POST', "/v1/admin/api_keys/$revoked->{id}/revoke");
is($r->{status}, 200, 'key revoked') or diag($r->{raw});
refused(me($revoked->{secret}), 401, 'api_key_revoked', $INVALID_TOKEN,
	'revoked key');

# a valid key of a suspended tenant is forbidden, not unauthenticated
$r = admin('POST', '/v1/admin/tenants', { name => 'suspended' });
my $suspended_tenant = $r->{json}{data}{id} // '';
$r = admin('POST', "/v1/admin/tenants/$suspended_tenant/api_keys", {});
my $suspended = $r->{json}{data} || {};
$t->psql("UPDATE tenants SET status = 'suspended' "
	. "WHERE id = '$suspended_tenant'");
refused(me($suspended->{secret}), 403, 'tenant_suspended', undef,
	'key of a suspended tenant');

###############################################################################
# expires_at: valid until then, api_key_expired after

my $expires_at = int(time()) + 3;
my $expiring = new_key(expires_at => $expires_at);
is($expiring->{expires_at}, $expires_at, 'expiring key: expires_at kept');

$r = me($expiring->{secret});
is($r->{status}, 200, 'expiring key: 200 before expires_at')
	or diag($r->{raw});

sleep(0.1) while time() < $expires_at + 1;

refused(me($expiring->{secret}), 401, 'api_key_expired', $INVALID_TOKEN,
	'expiring key after expires_at');

###############################################################################
# the access log names who made each request

me($static, 'X-Request-Id: log-static');
me($static_live, 'X-Request-Id: log-live');
me($key->{secret}, 'X-Request-Id: log-db');
me($unknown, 'X-Request-Id: log-unknown');

sub log_line {
	my ($id) = @_;
	my $line = $t->poll(3, sub {
		my @lines = split /\n/, $t->read_file('payflow.log');
		return (grep { /^\Q$id\E / } @lines)[0];
	}, 0.1);
	return $line // '';
}

is(log_line('log-static'), 'log-static tenant=ten_static '
	. 'key=key_static_owner mode=test role=owner status=200',
	'access log: static test key');
like(log_line('log-live'), qr/^log-live\ tenant=ten_static\ key=key_\w+
	\ mode=live\ role=viewer\ status=200$/x, 'access log: static live key');
is(log_line('log-db'), "log-db tenant=$tenant key=$key->{id} mode=test "
	. 'role=developer status=200', 'access log: key from the database');
is(log_line('log-unknown'), 'log-unknown tenant=- key=- mode=- role=- '
	. 'status=401', 'access log: nothing for a failed authentication');

###############################################################################
# the cache: with PostgreSQL stopped, a key already seen still works and a
# key never seen cannot be checked

my $cached = new_key(role => 'viewer');
my $uncached = new_key(role => 'viewer');

$r = me($cached->{secret});
is($r->{status}, 200, 'cached key: 200 while PostgreSQL is up')
	or diag($r->{raw});

$pg_stopped = 1;
ok($t->pg_ctl('stop'), 'PostgreSQL stopped');

# the pool notices the stop within a moment
my $down = $t->poll(5, sub {
	my $r = me($uncached->{secret});
	return ($r->{status} // 0) == 503 ? $r : undef;
}, 0.2) || me($uncached->{secret});

is($down->{status}, 503, 'uncached key, PostgreSQL down: 503')
	or diag($down->{raw});
is($down->{json}{error}{code}, 'database_unavailable',
	'uncached key, PostgreSQL down: database_unavailable');

for my $i (1 .. 3) {
	$r = me($cached->{secret});
	is($r->{status}, 200, "cached key, PostgreSQL down: 200 ($i)")
		or diag($r->{raw});
}
is($r->{json}{data}{key_id}, $cached->{id},
	'cached key, PostgreSQL down: its own identity');

# shape and checksum are checked before any lookup
my $typo = substr($uncached->{secret}, 0, -1)
	. (substr($uncached->{secret}, -1) eq 'A' ? 'B' : 'A');
refused(me($typo), 401, 'api_key_invalid', $INVALID_TOKEN,
	'bad checksum, PostgreSQL down: no lookup needed');

ok($t->pg_ctl('start'), 'PostgreSQL started again');
$pg_stopped = 0;

$r = $t->poll(10, sub {
	my $r = me($uncached->{secret});
	return ($r->{status} // 0) == 200 ? $r : undef;
}, 0.2) || me($uncached->{secret});
is($r->{status}, 200, 'uncached key: 200 once PostgreSQL is back')
	or diag($r->{raw});

###############################################################################

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
