#!/usr/bin/perl

# PayFlow over TLS: with "ssl_protocols TLSv1.2 TLSv1.3" /healthz answers
# over TLS 1.2 and 1.3, and a TLS 1.1 handshake is refused.
#
# A second server that does allow TLS 1.1 is the control: if the local
# OpenSSL cannot complete a TLS 1.1 handshake even there, the refusal
# proves nothing and is skipped.
#
# TLS does not involve PostgreSQL: payflow_db points at a port where
# nothing listens, so this test only needs the module.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_ssl->plan(11);

my $dir = $t->testdir;
$t->write_file('pgpass', "secret\n");

# self-signed certificate, valid one day
my $rc = system("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost"
	. " -days 1 -keyout $dir/localhost.key -out $dir/localhost.crt"
	. " >$dir/openssl.log 2>&1");
is($rc, 0, 'self-signed certificate generated')
	or diag($t->read_file('openssl.log'));

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "host=127.0.0.1 port=1 dbname=payflow user=payflow_app"
               password_file=%%TESTDIR%%/pgpass;

    ssl_certificate     %%TESTDIR%%/localhost.crt;
    ssl_certificate_key %%TESTDIR%%/localhost.key;

    server {
        listen       127.0.0.1:%%PORT_8443%% ssl;
        server_name  localhost;

        ssl_protocols TLSv1.2 TLSv1.3;

        location = /healthz { payflow_health; }
    }

    # control: the same certificate with TLS 1.1 allowed
    server {
        listen       127.0.0.1:%%PORT_8444%% ssl;
        server_name  localhost;

        ssl_protocols TLSv1.1 TLSv1.2;
        ssl_ciphers   DEFAULT:@SECLEVEL=0;

        location / { return 200 "legacy"; }
    }
}

EOF

$t->run;

my $port = $t->port(8443);

sub healthz_tls {
	my (%ssl) = @_;
	return http_parse(http_get('/healthz', port => $port, ssl => 1,
		%ssl));
}

###############################################################################

my $r = healthz_tls();
is($r->{status}, 200, 'healthz over TLS: 200')
	or diag($PayFlow::Test::LAST_ERROR);
is($r->{json}{data}{status}, 'ok', 'healthz over TLS: data.status ok');
like($r->{headers}{'x-request-id'} // '', qr/^req_[0-9A-Za-z]{24}$/,
	'healthz over TLS: X-Request-Id');

my $s = http_get('/healthz', port => $port, ssl => 1, start => 1);
my $version = $s ? $s->get_sslversion : 'none';
like($version, qr/^TLSv1_[23]$/, "negotiated $version");
http_end($s) if $s;

$r = healthz_tls(SSL_version => 'TLSv1_2');
is($r->{status}, 200, 'TLS 1.2 only client: 200');

$r = healthz_tls(SSL_version => 'TLSv1_3');
is($r->{status}, 200, 'TLS 1.3 only client: 200');

# plain HTTP on the TLS port is not served as if it were TLS
my $plain = http_parse(http_get('/healthz', port => $port));
isnt($plain->{status}, 200, 'plain HTTP on the TLS port: not 200');

###############################################################################
# TLS 1.1 is refused

# lowest security level, so the client may offer TLS 1.1 at all
my %tls11 = (SSL_version => 'TLSv1_1',
	SSL_cipher_list => 'DEFAULT:@SECLEVEL=0');

my $control = http_get('/', port => $t->port(8444), ssl => 1, %tls11);
my $can_tls11 = defined $control && $control =~ /legacy$/;

SKIP: {
	skip "local OpenSSL cannot complete a TLS 1.1 handshake: "
		. $PayFlow::Test::LAST_ERROR, 2 unless $can_tls11;

	ok($can_tls11, 'control: TLS 1.1 handshake works where allowed');

	my $raw = http_get('/healthz', port => $port, ssl => 1, %tls11);
	ok(!defined $raw, 'TLS 1.1 handshake refused on the PayFlow server')
		or diag("got: $raw");
}

ok($t->no_worker_crash, 'no worker crash');

###############################################################################
