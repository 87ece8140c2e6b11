#!/usr/bin/perl

# Secrets stay secret: after keys are created, rolled and used (well and
# badly), neither the error log at debug level nor the access log holds any
# API key secret, the admin secret, or the random part of a secret; the
# database holds no secret either, only HMAC-SHA256(pepper, secret), which
# is checked here against Digest::SHA with the pepper file's content.
#
# At debug level nginx itself logs every request header, Authorization
# included ("http header: ..."): those lines are nginx's, and the module's
# masking log writer masks them like every other line, so that no line
# holds a secret.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::SHA qw/hmac_sha256_hex/;
use JSON::PP;
use Test::More;
use PayFlow::Test;

# before new(): the error log is written at debug level
$ENV{PAYFLOW_TEST_DEBUG} = 1;

my $t = PayFlow::Test->new->has_module->has_pg->plan(31);

my ($static, $static_hash) = $t->pf_key('test', '--tenant', 'ten_secrets',
	'--role', 'viewer');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%
    payflow_static_key $static_hash tenant=ten_secrets mode=test role=viewer;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

$t->run;


sub request { api(@_) }

sub admin { $t->admin_api(@_) }

# every secret this test sees, by what it is, and the keys they belong to
my %secret = (admin => $t->admin_secret, static => $static);
my %key_of;

sub keep {
	my ($name, $r) = @_;
	my $data = $r->{json}{data} || {};
	ok(($r->{status} // 0) == 200 && $data->{secret},
		"$name: created, with its secret") or diag($r->{raw});
	$secret{$name} = $data->{secret} // '';
	$key_of{$name} = $data->{id} // '';
	return $data;
}

###############################################################################
# keys made in every way there is

my $r = admin('POST', '/v1/admin/tenants', { name => 'secrets' });
my $tenant = $r->{json}{data}{id} // '';

my $owner = keep('admin-made owner', admin('POST',
	"/v1/admin/tenants/$tenant/api_keys", { role => 'owner' }));
keep('admin-made live', admin('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'live', role => 'viewer' }));
my $dev = keep('tenant-made developer', request("Bearer $owner->{secret}",
	'POST', '/v1/api_keys', { role => 'developer' }));
keep('tenant-rolled', request("Bearer $owner->{secret}",
	'POST', "/v1/api_keys/$dev->{id}/roll", { grace_period => 60 }));
my $victim = keep('to be revoked', admin('POST',
	"/v1/admin/tenants/$tenant/api_keys", {}));
keep('admin-rolled', admin('POST',
	"/v1/admin/api_keys/$key_of{'admin-made live'}/roll",
	{ grace_period => 0 }));

$r = admin('POST', "/v1/admin/api_keys/$victim->{id}/revoke");
is($r->{status}, 200, 'a key revoked');

###############################################################################
# and used, well and badly

for my $name (sort keys %secret) {
	next if $name eq 'admin';
	request("Bearer $secret{$name}", 'GET', '/v1/me');
	request("Bearer $secret{$name}", 'GET', '/v1/api_keys');
	request("Bearer $secret{$name}x", 'GET', '/v1/me');
	request("Token $secret{$name}", 'GET', '/v1/me');
	request("Bearer $secret{$name}", 'GET', '/v1/admin/tenants');
}

request('Bearer ' . $t->admin_secret, 'GET', '/v1/me');
request('Bearer ' . $t->admin_secret . 'x', 'GET', '/v1/admin/tenants');

$r = request("Bearer $secret{'to be revoked'}", 'GET', '/v1/me');
is($r->{json}{error}{code}, 'api_key_revoked', 'the revoked key was tried');

$t->stop;

###############################################################################
# the logs

# the part of a secret nobody may see: all but the prefix
sub random_part {
	my ($s) = @_;
	return $s =~ /^pf_(?:test|live|admin)_(.+)$/ ? $1 : $s;
}

my $error_log = $t->read_file('error.log');
my $access_log = $t->read_file('access.log');

like($error_log, qr/\[debug\]/, 'error.log is at debug level');
like($error_log, qr/payflow/, 'error.log has lines of the module');

my @core = grep { /http header: "Authorization: / } split /\n/, $error_log;
ok(grep({ /Bearer pf_(?:test|live|admin)_\*/ } @core),
	"nginx's own debug lines of the Authorization header are masked")
	or diag(join "\n", @core[0 .. ($#core < 4 ? $#core : 4)]);
my $rest = $error_log;

for my $name (sort keys %secret) {
	my $part = random_part($secret{$name});
	ok(length $part >= 32 && index($rest, $part) < 0,
		"error.log: no $name secret");
	ok(index($access_log, $part) < 0, "access.log: no $name secret");
}

###############################################################################
# the database: hashes only, and exactly the expected ones

my $rows = $t->psql('SELECT row_to_json(k)::text FROM api_keys k')
	. $t->psql('SELECT row_to_json(a)::text FROM audit_logs a');

my @leaked = grep { index($rows, random_part($secret{$_})) >= 0 }
	sort keys %secret;
is("@leaked", '', 'api_keys and audit_logs hold no secret');

my $pepper = $t->read_file($t->pepper_file);
$pepper =~ s/\n\z//;

my @wrong;
for my $name (sort keys %key_of) {
	my $stored = $t->psql("SELECT key_hash || ' ' || prefix || last4 "
		. "FROM api_keys WHERE id = '$key_of{$name}'");
	my $s = $secret{$name};
	my $expect = hmac_sha256_hex($s, $pepper) . ' ' . substr($s, 0, 8)
		. substr($s, -4);
	push @wrong, "$name: $stored" unless $stored eq $expect;
}
is("@wrong", '', 'key_hash = HMAC-SHA256(pepper, secret) for all '
	. scalar(keys %key_of) . ' keys, prefix and last4 match');

###############################################################################

$t->assert_no_crash;

is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
