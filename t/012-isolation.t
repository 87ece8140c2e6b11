#!/usr/bin/perl

# Tenant isolation (BOLA): a key of tenant A cannot read, revoke or roll a
# key of tenant B; the 404 it gets is the same as for an id that does not
# exist, so it cannot even learn that the id is taken, and B's key keeps
# working; lists show only the caller's tenant, and a test key sees nothing
# of its own tenant's live keys.  Below nginx, the database enforces the
# same: connected as the application role with no settings, no tenant's
# rows are visible; with payflow.tenant_id set in a transaction, only that
# tenant's; the audit log cannot be changed; the role cannot bypass RLS.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg;

plan(skip_all => 'psql not found')
	unless grep { -x "$_/psql" } split /:/, ($ENV{PATH} || '');

$t->plan(49);

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

sub tenant {
	my ($name) = @_;
	my $r = admin('POST', '/v1/admin/tenants', { name => $name });
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	return $r->{json}{data}{id} // '';
}

sub key {
	my ($tenant, %body) = @_;
	my $r = admin('POST', "/v1/admin/tenants/$tenant/api_keys", \%body);
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	return $r->{json}{data} || {};
}

###############################################################################
# tenants A and B, each with owner keys; B also has a live key

my $A = tenant('tenant A');
my $B = tenant('tenant B');

my $a_owner = key($A, role => 'owner');
my $a_other = key($A, role => 'viewer');
my $b_owner = key($B, role => 'owner');
my $b_victim = key($B, role => 'developer');
my $b_live = key($B, role => 'owner', mode => 'live');

ok($A && $B && $a_owner->{secret} && $b_victim->{secret}
	&& $b_live->{secret}, 'tenants and keys created');

###############################################################################
# another tenant's key is exactly as absent as a missing one

# an id that exists nowhere, of the same shape as a real one
my $missing = 'key_' . join '', map { ('0' .. '9', 'A' .. 'Z')[rand 36] }
	1 .. 24;

# the error object and status, which must not differ
sub answer {
	my ($r) = @_;
	return { status => $r->{status}, error => $r->{json}{error} };
}

for my $case (
	[ 'GET', '' ],
	[ 'POST', '/revoke' ],
	[ 'POST', '/roll' ],
) {
	my ($method, $suffix) = @$case;
	my $what = "$method /v1/api_keys/{id}$suffix";

	my $theirs = request($a_owner->{secret}, $method,
		"/v1/api_keys/$b_victim->{id}$suffix");
	my $nobody = request($a_owner->{secret}, $method,
		"/v1/api_keys/$missing$suffix");

	is($theirs->{status}, 404, "$what, B's key: 404")
		or diag($theirs->{raw});
	is($theirs->{json}{error}{type}, 'invalid_request_error',
		"$what, B's key: invalid_request_error");
	is($theirs->{json}{error}{code}, 'resource_missing',
		"$what, B's key: resource_missing");

	# the ids are in neither answer, so the answers can be compared whole
	is_deeply(answer($theirs), answer($nobody),
		"$what: B's key answers exactly like a missing id");
	unlike($theirs->{body}, qr/\Q$B\E/, "$what: B's tenant id not shown");

	my $me = request($b_victim->{secret}, 'GET', '/v1/me');
	is($me->{status}, 200, "$what: B's key still works")
		or diag($me->{raw});
}

is($t->psql("SELECT revoked_at IS NULL AND replaced_by IS NULL "
	. "AND expires_at IS NULL FROM api_keys WHERE id = '$b_victim->{id}'"),
	't', "B's key is untouched in the database");
is($t->psql("SELECT count(*) FROM api_keys WHERE tenant_id = '$B'"), 3,
	'no key was added to B by the roll attempt');

# and A's own key is there for A
my $r = request($a_owner->{secret}, 'GET', "/v1/api_keys/$a_other->{id}");
is($r->{status}, 200, "A reads its own key") or diag($r->{raw});
is($r->{json}{data}{id}, $a_other->{id}, "A's own key: its id");

###############################################################################
# lists show the caller's tenant and mode only

sub list_ids {
	my ($secret) = @_;
	my $r = request($secret, 'GET', '/v1/api_keys?limit=100');
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	return [ sort map { $_->{id} } @{$r->{json}{data}{data} || []} ];
}

is_deeply(list_ids($a_owner->{secret}),
	[ sort $a_owner->{id}, $a_other->{id} ], "A's list: A's two keys");
is_deeply(list_ids($b_owner->{secret}),
	[ sort $b_owner->{id}, $b_victim->{id} ],
	"B's test list: B's test keys, not its live key");
is_deeply(list_ids($b_live->{secret}), [ $b_live->{id} ],
	"B's live list: B's live key only");

# a cursor naming another tenant's key reveals nothing either
$r = request($a_owner->{secret}, 'GET',
	"/v1/api_keys?starting_after=$b_victim->{id}");
is_deeply($r->{json}{data}{data}, [],
	"A's list after B's key id: empty");

###############################################################################
# a test key cannot reach its own tenant's live keys

$r = request($b_owner->{secret}, 'GET', "/v1/api_keys/$b_live->{id}");
is($r->{status}, 404, 'test key, GET live key: 404') or diag($r->{raw});
is($r->{json}{error}{code}, 'resource_missing',
	'test key, GET live key: resource_missing');

for my $action (qw/revoke roll/) {
	$r = request($b_owner->{secret}, 'POST',
		"/v1/api_keys/$b_live->{id}/$action");
	is($r->{status}, 404, "test key, $action live key: 404")
		or diag($r->{raw});
}

$r = request($b_live->{secret}, 'GET', '/v1/me');
is($r->{status}, 200, 'the live key still works') or diag($r->{raw});

# and the other way round
$r = request($b_live->{secret}, 'GET', "/v1/api_keys/$b_owner->{id}");
is($r->{status}, 404, 'live key, GET test key: 404') or diag($r->{raw});

###############################################################################
# the database itself, as the application role nginx uses

# runs SQL as payflow_app over TCP; returns (exit code, output, errors)
sub app_psql {
	my ($sql) = @_;
	my $dir = $t->testdir;

	open my $fh, '<', $ENV{PAYFLOW_PG_PASSWORD_FILE} or return (-1, '', $!);
	my $password = <$fh> // '';
	chomp $password;
	close $fh;

	$t->write_file('app.sql', $sql);

	local $ENV{PGPASSWORD} = $password;
	local $ENV{PGCONNECT_TIMEOUT} = 5;

	open my $stderr, '>&', \*STDERR or die "dup: $!";
	open STDERR, '>', "$dir/app.err" or die "app.err: $!";
	my $rc = system('psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
		'-h', $ENV{PAYFLOW_PG_HOST}, '-p', $ENV{PAYFLOW_PG_PORT},
		'-U', $ENV{PAYFLOW_PG_USER}, '-d', $ENV{PAYFLOW_PG_DB},
		'-f', "$dir/app.sql", '-o', "$dir/app.out") >> 8;
	open STDERR, '>&', $stderr or die "dup: $!";

	return ($rc, $t->read_file('app.out'), $t->read_file('app.err'));
}

my ($rc, $out) = app_psql('SELECT current_user, rolsuper, rolbypassrls '
	. 'FROM pg_roles WHERE rolname = current_user;');
is($rc, 0, 'psql as the application role') or diag($out);
is($out, "$ENV{PAYFLOW_PG_USER}|f|f\n",
	'the application role is neither superuser nor bypasses RLS');

($rc, $out) = app_psql(<<'SQL');
SELECT count(*) FROM api_keys;
SELECT count(*) FROM tenants;
SELECT count(*) FROM audit_logs;
SQL
is($out, "0\n0\n0\n", 'no settings: no key, tenant or audit row visible');

ok($t->psql('SELECT count(*) FROM api_keys') >= 5,
	'(while the superuser sees the keys)');

my $a_test_keys = $t->psql("SELECT count(*) FROM api_keys "
	. "WHERE tenant_id = '$A' AND NOT livemode");

($rc, $out) = app_psql(<<"SQL");
BEGIN;
SET LOCAL payflow.tenant_id = '$A';
SET LOCAL payflow.livemode = 'off';
SELECT count(*), count(*) FILTER (WHERE tenant_id = '$A') FROM api_keys;
SELECT string_agg(id, ',') FROM tenants;
COMMIT;
SELECT count(*) FROM api_keys;
SQL
is($rc, 0, 'scoped to A in a transaction') or diag($out);
is($out, "$a_test_keys|$a_test_keys\n$A\n0\n",
	'scoped to A: only A\'s keys and tenant row, nothing after COMMIT');

($rc, $out) = app_psql(<<"SQL");
BEGIN;
SET LOCAL payflow.tenant_id = '$B';
SET LOCAL payflow.livemode = 'on';
SELECT string_agg(id, ',') FROM api_keys;
COMMIT;
SQL
is($out, "$b_live->{id}\n", 'scoped to B live: B\'s live key only');

# writes through RLS: a row for another tenant is refused
($rc, $out) = app_psql(<<"SQL");
BEGIN;
SET LOCAL payflow.tenant_id = '$A';
SET LOCAL payflow.livemode = 'off';
UPDATE api_keys SET description = 'taken over' WHERE tenant_id = '$B'
    RETURNING id;
COMMIT;
SQL
is($out, '', 'scoped to A: an UPDATE of B\'s keys touches no row');
is($t->psql("SELECT count(*) FROM api_keys WHERE tenant_id = '$B' "
	. "AND description = 'taken over'"), 0, 'B\'s keys unchanged');

###############################################################################
# the audit log is append-only for the application

my $audit = $t->psql('SELECT count(*) || \'/\' || md5(string_agg('
	. 'row_to_json(a)::text, \'\' ORDER BY id)) FROM audit_logs a');

my $err;
my $refused = qr/permission denied|append-only/;

($rc, $out, $err) = app_psql("UPDATE audit_logs SET action = 'forged';");
ok($rc != 0 && $err =~ $refused, 'application role: UPDATE audit_logs fails')
	or diag("psql exit $rc: $err");

($rc, $out, $err) = app_psql("BEGIN; SET LOCAL payflow.admin = 'on'; "
	. "UPDATE audit_logs SET action = 'forged'; COMMIT;");
ok($rc != 0 && $err =~ $refused,
	'application role, admin scope: UPDATE audit_logs fails')
	or diag("psql exit $rc: $err");

($rc, $out, $err) = app_psql('DELETE FROM audit_logs;');
ok($rc != 0 && $err =~ $refused,
	'application role: DELETE FROM audit_logs fails')
	or diag("psql exit $rc: $err");

($rc, $out, $err) = app_psql("BEGIN; SET LOCAL payflow.admin = 'on'; "
	. "DELETE FROM audit_logs; COMMIT;");
ok($rc != 0 && $err =~ $refused,
	'application role, admin scope: DELETE FROM audit_logs fails')
	or diag("psql exit $rc: $err");

is($t->psql('SELECT count(*) || \'/\' || md5(string_agg('
	. 'row_to_json(a)::text, \'\' ORDER BY id)) FROM audit_logs a'), $audit,
	'audit_logs unchanged');

###############################################################################

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
