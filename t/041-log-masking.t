#!/usr/bin/perl

# What nginx writes about a request in the error log (request line,
# referrer) is masked: e-mail addresses keep their first character and
# domain, keys their prefix and last four characters, admin credentials
# and webhook secrets their prefix only; the line ends with the request id.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(9);

my ($key, $hash) = $t->pf_key('test', '--tenant', 'ten_mask',
	'--role', 'viewer');
my ($live) = $t->pf_key('live', '--tenant', 'ten_mask', '--role', 'viewer');
my $admin = $t->admin_secret;
my $whsec = 'whsec_' . ('Ab1' x 12);
my $email = 'alice.smith+shop@example.com';

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    client_max_body_size 1k;

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%PEPPER_FILE%%;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location / { payflow_api; }
    }
}

EOF

$t->run;

# an oversized body makes nginx log the request line and the referrer
my $r = http_parse(http_request('POST',
	"/v1/api_keys?email=$email&key=$key&admin=$admin&secret=$whsec",
	headers => ["Referer: https://shop.example/?live=$live"],
	body => 'x' x 2048));

is($r->{status}, 413, 'oversized body: 413 with an error-log line');

my $log = $t->error_log;
my ($line) = grep { /too large body/ } split /\n/, $log;
ok(defined $line, 'the error-log line is there') or diag($log);
$line //= '';

unlike($log, qr/\Q$email\E/, 'the e-mail address is not in the log');
like($line, qr/email=a\*+\@example\.com/, 'it is masked, domain kept');

unlike($log, qr/\Q$key\E|\Q$live\E/, 'no API key in the log');
like($line, qr/key=pf_test_\*{34}\Q@{[substr $key, -4]}\E/,
	'a key keeps its prefix and last four');

unlike($log, qr/\Q$admin\E/, 'no admin credential in the log');
unlike($log, qr/\Q$whsec\E/, 'no webhook secret in the log');

like($line, qr/request_id: \Q$r->{headers}{'x-request-id'}\E$/,
	'the line ends with the request id');

###############################################################################
