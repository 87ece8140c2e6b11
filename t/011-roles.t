#!/usr/bin/perl

# Roles and permissions: /v1/me lists the permissions each role grants
# (owner and admin: read, write, manage; developer: read, write; viewer:
# read; a read-only key keeps only read); managing keys needs "manage", so
# viewer, developer and read-only keys get 403 insufficient_permissions and
# create nothing; a key cannot create a key more powerful than itself (403
# role_not_allowed), nor roll or revoke one (403 role_not_allowed, the key
# untouched); keys are created in the mode of the key that creates them.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(90);

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


sub request { bearer(@_) }

sub admin { $t->admin_api(@_) }

###############################################################################
# one tenant, one key per role and mode, made by the operator

my $r = admin('POST', '/v1/admin/tenants', { name => 'roles' });
is($r->{status}, 200, 'tenant created') or diag($r->{raw});
my $tenant = $r->{json}{data}{id} // '';

sub admin_key {
	my (%body) = @_;
	my $r = admin('POST', "/v1/admin/tenants/$tenant/api_keys", \%body);
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	return ($r->{json}{data} || {})->{secret};
}

my %key = (
	owner => admin_key(role => 'owner'),
	admin => admin_key(role => 'admin'),
	developer => admin_key(role => 'developer'),
	viewer => admin_key(role => 'viewer'),
	owner_read_only => admin_key(role => 'owner',
		read_only => JSON::PP::true),
	live_owner => admin_key(role => 'owner', mode => 'live'),
);

is(scalar(grep { defined } values %key), 6, 'six keys created');

###############################################################################
# what /v1/me says each key may do

my %expect = (
	owner => ['owner', 0, [qw/read write manage/]],
	admin => ['admin', 0, [qw/read write manage/]],
	developer => ['developer', 0, [qw/read write/]],
	viewer => ['viewer', 0, [qw/read/]],
	owner_read_only => ['owner', 1, [qw/read/]],
);

for my $name (sort keys %expect) {
	my ($role, $read_only, $perms) = @{$expect{$name}};
	my $me = request($key{$name}, 'GET', '/v1/me');
	is($me->{status}, 200, "$name: /v1/me 200") or diag($me->{raw});
	is($me->{json}{data}{role}, $role, "$name: role $role");
	is($me->{json}{data}{read_only}, $read_only ? JSON::PP::true
		: JSON::PP::false, "$name: read_only " . ($read_only ? 'true'
		: 'false'));
	is_deeply($me->{json}{data}{permissions}, $perms,
		"$name: permissions @$perms");
}

###############################################################################
# reading keys needs "read", which every role has

for my $name (qw/viewer owner_read_only developer/) {
	$r = request($key{$name}, 'GET', '/v1/api_keys');
	is($r->{status}, 200, "$name: GET /v1/api_keys 200") or diag($r->{raw});
}

###############################################################################
# creating keys needs "manage": refused, and nothing is created

sub key_count {
	return $t->psql("SELECT count(*) FROM api_keys "
		. "WHERE tenant_id = '$tenant'");
}

my $before = key_count();

for my $name (qw/viewer developer owner_read_only/) {
	$r = request($key{$name}, 'POST', '/v1/api_keys', { role => 'viewer' });
	is($r->{status}, 403, "$name: POST /v1/api_keys 403")
		or diag($r->{raw});
	is($r->{json}{error}{type}, 'permission_error',
		"$name: permission_error");
	is($r->{json}{error}{code}, 'insufficient_permissions',
		"$name: insufficient_permissions");
}

# the other key endpoints that need "manage"
$r = request($key{viewer}, 'GET', '/v1/api_keys?limit=1');
my $some_id = $r->{json}{data}{data}[0]{id} // 'key_missing';

for my $action (qw/revoke roll/) {
	for my $name (qw/viewer owner_read_only/) {
		$r = request($key{$name}, 'POST',
			"/v1/api_keys/$some_id/$action");
		my $got = ($r->{status} // '') . ' '
			. ($r->{json}{error}{code} // '');
		is($got, '403 insufficient_permissions',
			"$name: $action refused");
	}
}

is(key_count(), $before, 'no key created by the refused requests');
is($t->psql("SELECT count(*) FROM api_keys WHERE tenant_id = '$tenant' "
	. 'AND (revoked_at IS NOT NULL OR replaced_by IS NOT NULL)'), 0,
	'no key revoked or rolled by the refused requests');

###############################################################################
# a key creates keys of its own role or below

sub create {
	my ($creator, %body) = @_;
	return request($key{$creator}, 'POST', '/v1/api_keys', \%body);
}

$r = create('admin', role => 'owner');
is($r->{status}, 403, 'admin creating an owner key: 403') or diag($r->{raw});
is($r->{json}{error}{type}, 'permission_error',
	'admin creating an owner key: permission_error');
is($r->{json}{error}{code}, 'role_not_allowed',
	'admin creating an owner key: role_not_allowed');
is($r->{json}{error}{param}, 'role',
	'admin creating an owner key: param role');
is(key_count(), $before, 'admin creating an owner key: nothing created');

for my $role (qw/admin developer viewer/) {
	$r = create('admin', role => $role);
	is($r->{status}, 200, "admin creates a $role key") or diag($r->{raw});
	is($r->{json}{data}{role}, $role, "admin's new key has role $role");
}

$r = create('admin');
is($r->{json}{data}{role}, 'developer', 'no role given: developer');

for my $role (qw/owner admin developer viewer/) {
	$r = create('owner', role => $role);
	is($r->{status}, 200, "owner creates a $role key") or diag($r->{raw});
	is($r->{json}{data}{role}, $role, "owner's new key has role $role");
}

# and what it creates works with exactly that role
my $made = $r->{json}{data}{secret} // '';
$r = request($made, 'GET', '/v1/me');
is($r->{json}{data}{role}, 'viewer', 'the new viewer key is a viewer');
is_deeply($r->{json}{data}{permissions}, ['read'],
	'the new viewer key may only read');

$r = create('owner', role => 'admin', read_only => JSON::PP::true);
is($r->{json}{data}{read_only}, JSON::PP::true, 'read-only key created');
$r = request($r->{json}{data}{secret} // '', 'GET', '/v1/me');
is_deeply($r->{json}{data}{permissions}, ['read'],
	'a read-only admin key may only read');

###############################################################################
# a key rolls and revokes keys of its own role or below, never above

sub key_id {
	my ($role) = @_;
	return $t->psql("SELECT id FROM api_keys WHERE tenant_id = '$tenant' "
		. "AND role = '$role' AND NOT livemode AND NOT read_only "
		. 'AND revoked_at IS NULL AND replaced_by IS NULL '
		. 'ORDER BY created_at LIMIT 1');
}

my $owner_id = key_id('owner');

for my $action (qw/roll revoke/) {
	$r = request($key{admin}, 'POST', "/v1/api_keys/$owner_id/$action",
		$action eq 'roll' ? { grace_period => 0 } : undef);
	is(($r->{status} // '') . ' ' . ($r->{json}{error}{code} // ''),
		'403 role_not_allowed', "admin: $action of an owner key refused")
		or diag($r->{raw});
	is($r->{json}{error}{param}, 'id', "admin: $action names the key");
	ok(!exists $r->{json}{data}, "admin: $action returns no secret");
}

is($t->psql("SELECT count(*) FROM api_keys WHERE id = '$owner_id' "
	. 'AND revoked_at IS NULL AND replaced_by IS NULL '
	. 'AND expires_at IS NULL'), 1, 'the owner key is untouched');
is(request($key{owner}, 'GET', '/v1/me')->{status}, 200,
	'the owner key still works');

my $dev_id = create('owner', role => 'developer')->{json}{data}{id} // '';
$r = request($key{admin}, 'POST', "/v1/api_keys/$dev_id/roll",
	{ grace_period => 0 });
is($r->{status}, 200, 'admin rolls a developer key') or diag($r->{raw});
is($r->{json}{data}{role}, 'developer', 'the rolled key stays developer');

my $new_dev = $r->{json}{data}{id} // '';
$r = request($key{admin}, 'POST', "/v1/api_keys/$new_dev/revoke");
is($r->{status}, 200, 'admin revokes a developer key') or diag($r->{raw});

my $admin_id = key_id('admin');
$r = request($key{developer}, 'POST', "/v1/api_keys/$admin_id/revoke");
is($r->{status}, 403, 'developer: no manage permission') or diag($r->{raw});

my $spare = create('owner', role => 'admin')->{json}{data}{id} // '';
$r = request($key{owner}, 'POST', "/v1/api_keys/$spare/roll",
	{ grace_period => 0 });
is($r->{status}, 200, 'owner rolls an admin key') or diag($r->{raw});

$r = admin('POST', "/v1/admin/api_keys/$owner_id/roll",
	{ grace_period => 3600 });
is($r->{status}, 200, 'the operator rolls an owner key') or diag($r->{raw});
$key{owner} = $r->{json}{data}{secret};

###############################################################################
# a key creates keys in its own mode

$r = create('owner', role => 'viewer');
is($r->{json}{data}{livemode}, JSON::PP::false, 'test key creates: test');
is($r->{json}{data}{prefix}, 'pf_test_', 'test key creates: prefix pf_test_');
like($r->{json}{data}{secret} // '', qr/^pf_test_/,
	'test key creates: pf_test_ secret');

$r = create('live_owner', role => 'viewer');
is($r->{status}, 200, 'live owner creates a key') or diag($r->{raw});
is($r->{json}{data}{livemode}, JSON::PP::true, 'live key creates: live');
is($r->{json}{data}{prefix}, 'pf_live_', 'live key creates: prefix pf_live_');
like($r->{json}{data}{secret} // '', qr/^pf_live_/,
	'live key creates: pf_live_ secret');
is($r->{json}{data}{tenant_id}, $tenant, 'live key creates: same tenant');

my $live_id = $r->{json}{data}{id} // '';
$r = request($r->{json}{data}{secret} // '', 'GET', '/v1/me');
is($r->{json}{data}{livemode}, JSON::PP::true, 'the new live key is live');
is($t->psql("SELECT livemode FROM api_keys WHERE id = '$live_id'"), 't',
	'the database has it as live');

###############################################################################

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
