#!/usr/bin/perl

# Dashboard JWTs on the API: GET /v1/me answers for a token signed with an
# HS256, RS256 or ES256 key named in nginx.conf and reflects its claims;
# every forged, expired, misdirected or malformed token gets the same 401
# envelope with a WWW-Authenticate: Bearer challenge.  The attacks that
# matter are each tried: "alg":"none", an HS256 token "signed" with the
# RS256 public key (algorithm confusion), a tampered payload, duplicate
# claims, a token too large to bother with.  The tenant a token names must
# exist (401 otherwise) and be active (403 tenant_suspended on every
# endpoint, as for an API key), and a change of its status is seen within
# a second; a JWT caller is rate-limited by $payflow_principal like a key.
# Bad keys are refused by "nginx -t" with a message that names
# the problem.
#
# Keys are made with the openssl command line tool; tokens are signed here,
# HS256 with Digest::SHA, RS256 and ES256 by openssl dgst.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::SHA qw/hmac_sha256/;
use JSON::PP;
use MIME::Base64 qw/encode_base64url/;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg;

plan(skip_all => 'openssl binary not found')
	unless grep { -x "$_/openssl" } split /:/, ($ENV{PATH} || '');

$t->plan(136);

my $dir = $t->testdir;

# the tenants the tokens name exist; tenant ids are ten_ + 24 characters
my %TEN = map { $_ => 'ten_' . ($_ x 3) } qw/acmecorp TenantRS esTenant/;

my $ISS = 'https://dash.payflow.test';
my $AUD = 'payflow-api';

###############################################################################
# keys

sub openssl {
	my ($args) = @_;
	return system("openssl $args >>$dir/openssl.log 2>&1") == 0;
}

my $keys_ok = openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048"
		. " -out $dir/rs.key.pem")
	&& openssl("pkey -in $dir/rs.key.pem -pubout -out $dir/rs.pub.pem")
	&& openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1"
		. " -out $dir/es.key.pem")
	&& openssl("pkey -in $dir/es.key.pem -pubout -out $dir/es.pub.pem")
	&& openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024"
		. " -out $dir/rs1024.key.pem")
	&& openssl("pkey -in $dir/rs1024.key.pem -pubout"
		. " -out $dir/rs1024.pub.pem")
	&& openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp384r1"
		. " -out $dir/p384.key.pem")
	&& openssl("pkey -in $dir/p384.key.pem -pubout -out $dir/p384.pub.pem")
	&& openssl("req -x509 -new -key $dir/rs.key.pem -subj /CN=dash"
		. " -days 1 -out $dir/rs.crt.pem");
ok($keys_ok, 'keys generated with openssl')
	or diag($t->read_file('openssl.log'));

my $HS_SECRET = 'hs-secret-' . join('', map { chr(97 + rand 26) } 1 .. 40);
$t->write_file('hs.secret', "$HS_SECRET\n");
$t->write_file('short.secret', ('s' x 31) . "\n");
$t->write_file('pepper', 'pepper-' . ('p' x 40) . "\n");

my $RS_PUB = $t->read_file('rs.pub.pem');

###############################################################################
# tokens

my $JSON = JSON::PP->new->canonical;

sub b64u { encode_base64url($_[0]) }

# ASN.1 DER ECDSA-Sig-Value to the JOSE form: r and s, 32 bytes each
sub der_to_jose {
	my ($der) = @_;
	my @b = unpack 'C*', $der;
	my $i = 2;
	$i++ if $b[1] & 0x80;
	my $out = '';
	for (1 .. 2) {
		die "not an INTEGER\n" unless $b[$i] == 0x02;
		my $len = $b[$i + 1];
		my $int = pack 'C*', @b[$i + 2 .. $i + 1 + $len];
		$int =~ s/^\x00+//;
		$out .= ("\x00" x (32 - length $int)) . $int;
		$i += 2 + $len;
	}
	return $out;
}

# openssl dgst -sign: the raw signature, DER for EC keys
sub dgst_sign {
	my ($keyfile, $input) = @_;
	unlink "$dir/sig.bin";
	open my $fh, '|-', "openssl dgst -sha256 -sign $keyfile"
		. " -out $dir/sig.bin 2>>$dir/openssl.log"
		or die "openssl dgst: $!";
	binmode $fh;
	print $fh $input;
	close $fh or die "openssl dgst failed\n";
	return $t->read_file('sig.bin');
}

# signature over $input; $key is hs, rs, es, es-der (not converted to
# JOSE), none (empty), or [ 'hmac', secret ]
sub sign {
	my ($key, $input) = @_;
	return hmac_sha256($input, $key->[1]) if ref $key;
	return hmac_sha256($input, $HS_SECRET) if $key eq 'hs';
	return dgst_sign("$dir/rs.key.pem", $input) if $key eq 'rs';
	return der_to_jose(dgst_sign("$dir/es.key.pem", $input))
		if $key eq 'es';
	return dgst_sign("$dir/es.key.pem", $input) if $key eq 'es-der';
	return '' if $key eq 'none';
	die "unknown signing key $key\n";
}

sub claims {
	my (%over) = @_;
	my $now = time;
	my %c = (
		iss => $ISS,
		aud => $AUD,
		sub => 'usr_dashboard_1',
		tenant => $TEN{acmecorp},
		role => 'developer',
		mode => 'test',
		iat => $now,
		exp => $now + 300,
		%over,
	);
	delete $c{$_} for grep { !defined $c{$_} } keys %c;
	return \%c;
}

# token(kid => 'hs', sign => 'hs', claims => {...} or payload => raw JSON,
# header => {...} replacing the whole header)
sub token {
	my (%a) = @_;
	my $kid = exists $a{kid} ? $a{kid} : 'hs';
	my $alg = $a{alg} || { hs => 'HS256', rs => 'RS256', es => 'ES256' }
		->{$kid} || 'HS256';
	my $header = $a{header}
		|| { alg => $alg, typ => 'JWT', defined $kid ? (kid => $kid) : () };
	my $payload = defined $a{payload} ? $a{payload}
		: $JSON->encode($a{claims} || claims());
	my $input = b64u($JSON->encode($header)) . '.' . b64u($payload);
	my $key = $a{sign} || $kid;
	return $input . '.' . b64u(sign($key, $input));
}

my @SENT;

sub me {
	my ($token) = @_;
	push @SENT, $token;
	return http_parse(http_get('/v1/me',
		headers => ["Authorization: Bearer $token"]));
}

sub accepted {
	my ($token, $what) = @_;
	my $r = me($token);
	is($r->{status}, 200, "$what: 200")
		or diag($r->{raw});
	return $r->{json} && $r->{json}{data} || {};
}

sub denied {
	my ($token, $what, $code) = @_;
	$code ||= 'invalid_token';
	my $r = me($token);
	is($r->{status}, 401, "$what: 401") or diag($r->{raw});
	is($r->{json} && $r->{json}{error}{code}, $code,
		"$what: error.code $code");
	return $r;
}

# for strings that are not even shaped like a JWT, the API may answer with
# its own code (a malformed API key, say): only the 401 is asserted
sub unauthorized {
	my ($token, $what) = @_;
	my $r = me($token);
	is($r->{status}, 401, "$what: 401") or diag($r->{raw});
	is($r->{json} && $r->{json}{error}{type}, 'authentication_error',
		"$what: error.type authentication_error");
	return $r;
}

###############################################################################

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    # room for tokens just over the 8 KB limit, so that the module, not
    # the header parser, is what refuses them
    large_client_header_buffers 4 16k;

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%TESTDIR%%/pepper;

    payflow_jwt_key hs alg=HS256 file=%%TESTDIR%%/hs.secret;
    payflow_jwt_key rs alg=RS256 file=%%TESTDIR%%/rs.pub.pem;
    payflow_jwt_key es alg=ES256 file=%%TESTDIR%%/es.pub.pem;
    payflow_jwt issuer=https://dash.payflow.test audience=payflow-api
                leeway=30s;

    payflow_ratelimit_zone  jwt_rl:1m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location / { payflow_api; }
    }

    # the shipped config's per-caller limit, tight
    server {
        listen       127.0.0.1:%%PORT_8081%%;
        server_name  localhost;

        location / {
            payflow_ratelimit zone=jwt_rl key=$payflow_principal
                              rate=1r/m burst=5 name=caller;
            add_header X-Principal $payflow_principal always;
            payflow_api;
        }
    }
}

EOF

$t->run;

for my $id (values %TEN) {
	$t->psql("INSERT INTO tenants (id, name) VALUES ('$id', 'jwt') "
		. "ON CONFLICT (id) DO UPDATE SET status = 'active'");
}

###############################################################################
# valid tokens, one per algorithm; the claims come back from /v1/me

my $r = me(token(kid => 'hs'));
is($r->{status}, 200, 'HS256: 200') or diag($r->{raw});
my $d = $r->{json} && $r->{json}{data} || {};
is($r->{json} && $r->{json}{success}, JSON::PP::true, 'HS256: success true');
is($d->{object}, 'me', 'HS256: object me');
is($d->{credential}, 'jwt', 'HS256: credential jwt');
is($d->{tenant_id}, $TEN{acmecorp}, 'HS256: tenant_id is the tenant claim');
is($d->{role}, 'developer', 'HS256: role is the role claim');
is($d->{subject}, 'usr_dashboard_1', 'HS256: subject is the sub claim');
is($d->{livemode}, JSON::PP::false, 'HS256: mode test -> livemode false');
ok(exists $d->{key_id} && !defined $d->{key_id}, 'HS256: key_id null');
is(ref $d->{permissions}, 'ARRAY', 'HS256: permissions is an array');

$d = accepted(token(kid => 'rs', claims => claims(tenant => $TEN{TenantRS},
	role => 'owner', mode => 'live', sub => 'usr_rs')), 'RS256');
is($d->{tenant_id}, $TEN{TenantRS}, 'RS256: tenant_id');
is($d->{role}, 'owner', 'RS256: role');
is($d->{subject}, 'usr_rs', 'RS256: subject');
is($d->{livemode}, JSON::PP::true, 'RS256: mode live -> livemode true');

$d = accepted(token(kid => 'es', claims => claims(tenant => $TEN{esTenant},
	role => 'viewer', mode => 'test')), 'ES256');
is($d->{tenant_id}, $TEN{esTenant}, 'ES256: tenant_id');
is($d->{role}, 'viewer', 'ES256: role');
is($d->{livemode}, JSON::PP::false, 'ES256: livemode false');

$d = accepted(token(kid => 'hs', claims => claims(mode => 'live',
	role => 'admin')), 'HS256 live');
is($d->{livemode}, JSON::PP::true, 'HS256 live: livemode true');

###############################################################################
# the 401 envelope

$r = denied(token(kid => 'hs', claims => claims(exp => time - 120)),
	'expired 120s ago', 'token_expired');
is($r->{json} && $r->{json}{success}, JSON::PP::false,
	'401: success false');
is($r->{json} && $r->{json}{error}{type}, 'authentication_error',
	'401: error.type authentication_error');
ok(length($r->{json} && $r->{json}{error}{message} || ''),
	'401: error.message present');
like($r->{headers}{'www-authenticate'} // '', qr/^Bearer\b/,
	'401: WWW-Authenticate: Bearer');

$r = denied(token(kid => 'hs', sign => [hmac => 'x' x 40]),
	'HS256 signed with another secret');
like($r->{headers}{'www-authenticate'} // '', qr/^Bearer\b/,
	'invalid signature: WWW-Authenticate: Bearer');
is($r->{json} && $r->{json}{error}{type}, 'authentication_error',
	'invalid signature: error.type authentication_error');

###############################################################################
# time claims, with leeway=30s

accepted(token(claims => claims(exp => time - 10)),
	'expired 10s ago, within leeway');
denied(token(claims => claims(nbf => time + 300)), 'nbf in 5 minutes');
accepted(token(claims => claims(nbf => time + 10)),
	'nbf in 10s, within leeway');
denied(token(claims => claims(exp => undef)), 'no exp');
denied(token(claims => claims(exp => '' . (time + 300))), 'exp a string');

###############################################################################
# issuer and audience

denied(token(claims => claims(iss => 'https://evil.test')), 'wrong issuer');
denied(token(claims => claims(iss => undef)), 'no issuer');
denied(token(claims => claims(aud => 'other-api')), 'wrong audience');
accepted(token(claims => claims(aud => ['other-api', $AUD])),
	'audience array containing payflow-api');
denied(token(claims => claims(aud => ['other-api', 'third'])),
	'audience array without payflow-api');

###############################################################################
# algorithm and key choice

denied(token(header => { alg => 'none', typ => 'JWT' }, sign => 'none'),
	'alg none, unsigned');
denied(token(header => { alg => 'none', kid => 'hs' }, sign => 'hs'),
	'alg none with an HMAC signature');
denied(token(header => { alg => 'hs256', kid => 'hs' }, sign => 'hs'),
	'alg in lower case');

# the classic: the RS256 public key's PEM bytes used as an HMAC secret
denied(token(kid => 'rs', alg => 'HS256', sign => [hmac => $RS_PUB]),
	'HS256 token HMAC-signed with the RS256 public key, kid rs');

denied(token(kid => 'es', alg => 'RS256', sign => 'rs'),
	'RS256 token naming the ES256 key');
denied(token(kid => 'nope', alg => 'HS256', sign => 'hs'), 'unknown kid');
denied(token(kid => undef, alg => 'HS256', sign => 'hs'),
	'no kid while three keys are configured');
denied(token(kid => 'es', sign => 'es-der'),
	'ES256 signature in DER instead of r||s');

###############################################################################
# integrity and structure

my $good = token(claims => claims(role => 'viewer'));
my ($h, $p, $s) = split /\./, $good;
my $forged = b64u($JSON->encode(claims(role => 'owner')));
denied("$h.$forged.$s", 'payload changed after signing');
denied("$h.$p.", 'signature removed');
unauthorized("$h.$p", 'two parts');
unauthorized("$h.$p.$s.$s", 'four parts');
denied("$h.$p.$s=", 'base64 padding on the signature');

my $dup = $JSON->encode(claims());
$dup =~ s/^\{/{"tenant":"evil_corp",/;
denied(token(payload => $dup), 'duplicate "tenant" in the payload');
denied(token(payload => '["not", "an", "object"]'), 'payload a JSON array');

###############################################################################
# application claims

denied(token(claims => claims(tenant => undef)), 'no tenant');
denied(token(claims => claims(role => undef)), 'no role');
denied(token(claims => claims(mode => undef)), 'no mode');
denied(token(claims => claims(mode => 'prod')), 'mode "prod"');
denied(token(claims => claims(role => 'root')), 'role "root"');
denied(token(claims => claims(tenant => 'acme corp')),
	'tenant with a space');
denied(token(claims => claims(tenant => 't' x 65)), 'tenant of 65 chars');
$r = denied(token(claims => claims(tenant => 't' x 64)),
	'tenant of 64 chars, no such tenant');
like($r->{json}{error}{message} // '', qr/tenant does not exist/,
	'tenant of 64 chars: parsed, then refused as no such tenant');

###############################################################################
# the tenant a token names exists and is active, as for an API key

sub within_1s {
	my ($token, $status) = @_;
	for (1 .. 20) {
		my $r = me($token);
		return $r if ($r->{status} // 0) == $status;
		select undef, undef, undef, 0.05;
	}
	return me($token);
}

my $ghost = 'ten_' . ('ghost' x 4) . 'abcd';
my $ghost_token = token(claims => claims(tenant => $ghost, role => 'owner'));
$r = denied($ghost_token, 'a tenant that does not exist');
like($r->{json}{error}{message} // '', qr/tenant does not exist/,
	'no such tenant: the message says so');
$r = denied($ghost_token, 'no such tenant, asked again (cached)');

$t->psql("INSERT INTO tenants (id, name) VALUES ('$ghost', 'late')");
$r = within_1s($ghost_token, 200);
is($r->{status}, 200, 'the tenant created: its token works within 1 s')
	or diag($r->{raw});

my $owner = token(claims => claims(role => 'owner'));
is(me($owner)->{status}, 200, 'owner token of an active tenant: 200');

$t->psql("UPDATE tenants SET status = 'suspended' "
	. "WHERE id = '$TEN{acmecorp}'");
$r = within_1s($owner, 403);
is($r->{status}, 403, 'tenant suspended: /v1/me 403 within 1 s')
	or diag($r->{raw});
is($r->{json}{error}{code}, 'tenant_suspended',
	'tenant suspended: tenant_suspended');

$r = bearer($owner, 'POST', '/v1/payments',
	{ amount => 1000, currency => 'USD' });
is(($r->{status} // '') . ' ' . ($r->{json}{error}{code} // ''),
	'403 tenant_suspended', 'tenant suspended: no payment')
	or diag($r->{raw});

$r = bearer($owner, 'POST', '/v1/api_keys', { role => 'owner' });
is(($r->{status} // '') . ' ' . ($r->{json}{error}{code} // ''),
	'403 tenant_suspended', 'tenant suspended: no API key')
	or diag($r->{raw});

is($t->psql("SELECT count(*) FROM payments WHERE tenant_id = "
	. "'$TEN{acmecorp}'") . ' '
	. $t->psql("SELECT count(*) FROM api_keys WHERE tenant_id = "
	. "'$TEN{acmecorp}'"), '0 0', 'nothing written for the suspended tenant');

$t->psql("UPDATE tenants SET status = 'active' WHERE id = '$TEN{acmecorp}'");
$r = within_1s($owner, 200);
is($r->{status}, 200, 'tenant active again: 200 within 1 s')
	or diag($r->{raw});

###############################################################################
# a JWT caller is limited by $payflow_principal like a key: jwt:<tenant>:<sub>

sub me_limited {
	my ($token) = @_;
	return http_parse(http_get('/v1/me', port => $t->port(8081),
		headers => ["Authorization: Bearer $token"]));
}

my $limited = token(claims => claims(sub => 'usr_limited'));
my @codes = map { me_limited($limited)->{status} // 0 } 1 .. 8;
is(join(' ', @codes), '200 200 200 200 200 429 429 429',
	'JWT caller: 5 pass, then 429');

$r = me_limited(token(claims => claims(sub => 'usr_other')));
is($r->{status}, 200, 'another subject has its own limit');
is($r->{headers}{'x-principal'}, "jwt:$TEN{acmecorp}:usr_other",
	'$payflow_principal is jwt:<tenant>:<sub>');

###############################################################################
# size: 8192 bytes is the limit

# a signed HS256 token of exactly $len bytes, padded in a claim; the
# header gets trailing spaces where base64 cannot hit the length otherwise
sub token_of_length {
	my ($len) = @_;
	for my $sp (0 .. 3) {
		my $hjson = $JSON->encode({ alg => 'HS256', kid => 'hs' })
			. (' ' x $sp);
		my $base = $JSON->encode(claims(pad => ''));
		my $fixed = length(b64u($hjson)) + 2 + 43;
		for my $n (0 .. $len) {
			my $plen = length($base) + $n;
			next unless $fixed + int((4 * $plen + 2) / 3) == $len;
			my $input = b64u($hjson) . '.'
				. b64u($JSON->encode(claims(pad => 'x' x $n)));
			return $input . '.' . b64u(sign('hs', $input));
		}
	}
	die "no token of $len bytes\n";
}

my $max = token_of_length(8192);
is(length $max, 8192, 'token of 8192 bytes built');
accepted($max, 'token of 8192 bytes');
denied(token_of_length(8193), 'token of 8193 bytes');

###############################################################################
# tokens stay out of the log

$t->stop;

SKIP: {
	skip 'PAYFLOW_TEST_DEBUG logs request headers', 1
		if $ENV{PAYFLOW_TEST_DEBUG};

	my $log = $t->error_log;
	my @leaked = grep {
		my $sig = (split /\./, $_)[2];
		index($log, $_) >= 0 || (length($sig // '') > 20
			&& index($log, $sig) >= 0);
	} @SENT;
	is(scalar @leaked, 0, 'no token or signature in error.log');
}

ok($t->no_worker_crash, 'no worker crash');
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
# nginx -t refuses unusable keys, naming the problem

sub key_conf {
	my ($keys, $jwt) = @_;
	$jwt //= 'payflow_jwt audience=payflow-api;';
	return <<"EOF";
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%TESTDIR%%/pepper;
    $keys
    $jwt

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location / { payflow_api; }
    }
}
EOF
}

sub check_keys {
	my ($name, $keys, $jwt) = @_;
	$t->write_file_expand("$name.conf", key_conf($keys, $jwt));
	return $t->test_config("$name.conf");
}

sub refused {
	my ($name, $keys, $re, $what) = @_;
	my ($rc, $out) = check_keys($name, $keys);
	isnt($rc, 0, "$what: nginx -t fails");
	like($out, $re, "$what: the message says why") or diag($out);
}

my ($rc, $out) = check_keys('cert', 'payflow_jwt_key c alg=RS256 '
	. "file=$dir/rs.crt.pem;");
is($rc, 0, 'RS256 key given as a certificate: nginx -t succeeds')
	or diag($out);

# a token for another service must never be accepted: no audience, no JWT
($rc, $out) = check_keys('noaud', "payflow_jwt_key hs alg=HS256 "
	. "file=$dir/hs.secret;", 'payflow_jwt issuer=x;');
isnt($rc, 0, 'JWT keys without payflow_jwt audience=: nginx -t fails');
like($out, qr/requires "payflow_jwt audience=/,
	'no audience: the message says why') or diag($out);

refused('short', "payflow_jwt_key hs alg=HS256 file=$dir/short.secret;",
	qr/payflow_jwt_key: .*31 bytes, at least 32/,
	'HS256 secret of 31 bytes');
refused('rsa1024', "payflow_jwt_key rs alg=RS256 file=$dir/rs1024.pub.pem;",
	qr/payflow_jwt_key: .*1024 bits, at least 2048/, 'RSA 1024 for RS256');
refused('ec4rs', "payflow_jwt_key rs alg=RS256 file=$dir/es.pub.pem;",
	qr/payflow_jwt_key: .*not an RSA key/, 'EC key for RS256');
refused('p384', "payflow_jwt_key es alg=ES256 file=$dir/p384.pub.pem;",
	qr/payflow_jwt_key: .*not an EC P-256 key/, 'P-384 key for ES256');
refused('missing', "payflow_jwt_key hs alg=HS256 file=$dir/absent;",
	qr/payflow_jwt_key: .*\Q$dir\E\/absent.*No such file/,
	'missing key file');
refused('alg', "payflow_jwt_key hs alg=HS384 file=$dir/hs.secret;",
	qr/payflow_jwt_key: .*"HS384"/, 'unknown algorithm');
refused('dup', "payflow_jwt_key hs alg=HS256 file=$dir/hs.secret;\n"
	. "    payflow_jwt_key hs alg=RS256 file=$dir/rs.pub.pem;",
	qr/payflow_jwt_key: duplicate key name "hs"/, 'duplicate key name');

###############################################################################
