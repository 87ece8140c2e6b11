#!/usr/bin/perl

# Revocation reaches every worker within a second although keys are cached:
# with two workers that both hold a key, a revoke through the API, a revoke
# by SQL straight into the database and a tenant suspension by SQL each turn
# every following request into 401 api_key_revoked (403 tenant_suspended)
# in under 1 s.  Rolling a key with a grace period keeps the old secret
# working next to the new one; with grace 0 the old secret stops at once;
# a rolled or revoked key cannot be rolled again.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(50);

# two workers, each with its own PostgreSQL connections and LISTEN; the
# harness's globals say one, and nginx takes worker_processes only once
my $globals = $t->test_globals;
$globals =~ s/^worker_processes 1;$/worker_processes 2;/m
	or BAIL_OUT('no worker_processes line in the harness globals');

# reuseport: the kernel spreads connections over both workers
$t->write_file_expand('nginx.conf', <<"EOF");

$globals

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    log_format workers '\$pid \$payflow_request_id \$status';
    access_log %%TESTDIR%%/workers.log workers;

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    payflow_key_cache zone=keys:1m ttl=60s negative_ttl=10s;
    %%ADMIN_KEY%%

    server {
        listen       127.0.0.1:%%PORT_8080%% reuseport;
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
# bursts of /v1/me over separate connections, told apart in the log by
# their X-Request-Id

my $bursts = 0;

# returns the name of the burst and its responses
sub burst {
	my ($secret) = @_;
	my $name = 'burst-' . ++$bursts;
	my @r = http_many(20, '/v1/me', headers => [
		"Authorization: Bearer $secret", "X-Request-Id: $name" ]);
	return ($name, @r);
}

# "status code" of each response, e.g. "401 api_key_revoked", "200 "
sub outcomes {
	return map { ($_->{status} // 'none') . ' '
		. ($_->{json}{error}{code} // '') } @_;
}

sub all_are {
	my ($want, @r) = @_;
	return !grep { $_ ne $want } outcomes(@r);
}

# the worker pids that answered a burst, from the access log
sub workers_of {
	my ($name) = @_;
	my $lines = $t->poll(3, sub {
		my @l = grep { / \Q$name\E \d+$/ }
			split /\n/, $t->read_file('workers.log');
		return @l >= 20 ? \@l : undef;
	}, 0.05) || [];
	my %pids = map { (split / /)[0] => 1 } @$lines;
	return scalar keys %pids;
}

# a burst that both workers answer with $want
sub everywhere {
	my ($secret, $want, $what) = @_;
	my ($name, @r) = burst($secret);
	ok(all_are($want, @r), "$what: 20 requests, all $want")
		or diag(join ', ', outcomes(@r));
	is(workers_of($name), 2, "$what: answered by both workers");
}

# bursts until every response is $want; seconds since $since, or undef
sub converge {
	my ($secret, $want, $since) = @_;
	while (time - $since < 5) {
		my ($name, @r) = burst($secret);
		return time - $since if all_are($want, @r);
	}
	return undef;
}

sub within_1s {
	my ($took, $what) = @_;
	ok(defined $took && $took < 1, sprintf('%s: within 1 s (%s)', $what,
		defined $took ? sprintf('%.3f s', $took) : 'not in 5 s'));
}

###############################################################################
# a tenant with a key that manages the others

my $r = admin('POST', '/v1/admin/tenants', { name => 'revocation' });
is($r->{status}, 200, 'tenant created') or diag($r->{raw});
my $tenant = $r->{json}{data}{id} // '';

sub new_key {
	my ($for) = @_;
	my $r = admin('POST', '/v1/admin/tenants/' . ($for // $tenant)
		. '/api_keys', { role => 'developer' });
	diag($r->{raw}) unless ($r->{status} // 0) == 200;
	return $r->{json}{data} || {};
}

$r = admin('POST', "/v1/admin/tenants/$tenant/api_keys", { role => 'owner' });
my $manager = $r->{json}{data}{secret} // '';

###############################################################################
# revoked through the API

my $api_victim = new_key();
everywhere($api_victim->{secret}, '200 ', 'before revoke (API)');

$r = request($manager, 'POST', "/v1/api_keys/$api_victim->{id}/revoke");
my $revoked_at = time;
is($r->{status}, 200, 'revoke: 200') or diag($r->{raw});
is($r->{json}{data}{id}, $api_victim->{id}, 'revoke: the key is returned');
ok($r->{json}{data}{revoked_at}, 'revoke: revoked_at set');

within_1s(converge($api_victim->{secret}, '401 api_key_revoked',
	$revoked_at), 'revoked (API) everywhere');
everywhere($api_victim->{secret}, '401 api_key_revoked',
	'after revoke (API)');

# revoking again changes nothing
my $first = $r->{json}{data}{revoked_at};
$r = request($manager, 'POST', "/v1/api_keys/$api_victim->{id}/revoke");
is($r->{status}, 200, 'revoke again: 200') or diag($r->{raw});
is($r->{json}{data}{revoked_at}, $first, 'revoke again: same revoked_at');

###############################################################################
# revoked by SQL, behind nginx's back: only NOTIFY can tell the workers

my $sql_victim = new_key();
everywhere($sql_victim->{secret}, '200 ', 'before revoke (SQL)');

$t->psql("UPDATE api_keys SET revoked_at = now() "
	. "WHERE id = '$sql_victim->{id}'");
$revoked_at = time;
is($t->psql_status, 0, 'revoked by SQL');

within_1s(converge($sql_victim->{secret}, '401 api_key_revoked',
	$revoked_at), 'revoked (SQL) everywhere');
everywhere($sql_victim->{secret}, '401 api_key_revoked',
	'after revoke (SQL)');

###############################################################################
# the tenant suspended by SQL, and reinstated

$r = admin('POST', '/v1/admin/tenants', { name => 'to be suspended' });
my $other_tenant = $r->{json}{data}{id} // '';
my $suspendee = new_key($other_tenant);
everywhere($suspendee->{secret}, '200 ', 'before suspension');

$t->psql("UPDATE tenants SET status = 'suspended' "
	. "WHERE id = '$other_tenant'");
my $changed_at = time;

within_1s(converge($suspendee->{secret}, '403 tenant_suspended',
	$changed_at), 'suspended everywhere');
everywhere($suspendee->{secret}, '403 tenant_suspended',
	'after suspension');

$t->psql("UPDATE tenants SET status = 'active' WHERE id = '$other_tenant'");
$changed_at = time;

within_1s(converge($suspendee->{secret}, '200 ', $changed_at),
	'reinstated everywhere');

# the suspension of one tenant did not touch another's keys
$r = request($manager, 'GET', '/v1/me');
is($r->{status}, 200, 'the other tenant\'s key works throughout');

###############################################################################
# roll with a grace period: both secrets work

my $rolled = new_key();
everywhere($rolled->{secret}, '200 ', 'before roll');

$r = request($manager, 'POST', "/v1/api_keys/$rolled->{id}/roll",
	{ grace_period => 60 });
my $rolled_at = time;
is($r->{status}, 200, 'roll (grace 60): 200') or diag($r->{raw});

my $new = $r->{json}{data} || {};
my $previous = $new->{previous_key} || {};
like($new->{secret} // '', qr/^pf_test_/, 'roll: a new test secret');
isnt($new->{id}, $rolled->{id}, 'roll: a new key id');
is($new->{role}, 'developer', 'roll: the new key keeps the role');
is($previous->{id}, $rolled->{id}, 'roll: previous_key is the old key');
is($previous->{replaced_by}, $new->{id},
	'roll: previous_key.replaced_by is the new key');
ok(abs(($previous->{expires_at} // 0) - ($rolled_at + 60)) <= 2,
	'roll: previous_key expires in 60 s')
	or diag("expires_at $previous->{expires_at}, now $rolled_at");

everywhere($rolled->{secret}, '200 ', 'old secret within the grace period');
everywhere($new->{secret}, '200 ', 'new secret');

$r = request($manager, 'POST', "/v1/api_keys/$rolled->{id}/roll");
is($r->{status}, 409, 'rolling a rolled key: 409') or diag($r->{raw});
is($r->{json}{error}{code}, 'api_key_not_active',
	'rolling a rolled key: api_key_not_active');

$r = request($manager, 'POST', "/v1/api_keys/$api_victim->{id}/roll");
is($r->{status}, 409, 'rolling a revoked key: 409') or diag($r->{raw});
is($r->{json}{error}{code}, 'api_key_not_active',
	'rolling a revoked key: api_key_not_active');

###############################################################################
# roll with grace 0: the old secret stops at once

my $cut = new_key();
everywhere($cut->{secret}, '200 ', 'before roll (grace 0)');

# late in a second: an end of validity rounded to the nearest whole
# second would still lie ahead, and the old secret would live on
sleep(0.01) until time - int(time) >= 0.55 && time - int(time) < 0.7;

$r = request($manager, 'POST', "/v1/api_keys/$cut->{id}/roll",
	{ grace_period => 0 });
is($r->{status}, 200, 'roll (grace 0): 200') or diag($r->{raw});

# no waiting at all: the very next requests
everywhere($cut->{secret}, '401 api_key_expired',
	'old secret right after the roll (grace 0)');
everywhere($r->{json}{data}{secret} // '', '200 ', 'new secret (grace 0)');

###############################################################################

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
