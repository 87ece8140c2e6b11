#!/usr/bin/perl

# What nginx writes about a request in the error log (request line,
# referrer, and its own messages, such as a duplicate Authorization header
# quoted at info level) is masked: e-mail addresses keep their first
# character and domain (also with the "@" sent as %40), keys their prefix
# and last four characters, admin credentials and webhook secrets their
# prefix only (a base64 secret whole, "+" and "/" and their %2B / %2F
# forms included); the line ends with the request id.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(17);

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
# nginx's own message quoting two Authorization headers, at info level

my ($other) = $t->pf_key('test', '--tenant', 'ten_mask', '--role', 'viewer');
$r = http_parse(http_get('/v1/me', headers => ["Authorization: Bearer $key",
	"Authorization: Bearer $other"]));
is($r->{status}, 400, 'two Authorization headers: 400');

$log = $t->error_log;
($line) = grep { /duplicate header line/ } split /\n/, $log;
ok(defined $line, 'nginx logged the duplicate header') or diag($log);
unlike($log, qr/\Q$key\E|\Q$other\E/, 'neither key is in the log');
like($line // '', qr/pf_test_\*{34}\Q@{[substr $other, -4]}\E/,
	'the duplicate is masked like any key');

###############################################################################
# a percent-encoded e-mail, a base64 webhook secret with + and /

my $b64 = 'whsec_' . ('Ab+/9z' x 6) . '==';
(my $b64_query = $b64) =~ s{([+/=])}{sprintf '%%%02X', ord $1}ge;

$r = http_parse(http_request('POST',
	"/v1/api_keys?email=bob.jones%40example.com&s=$b64_query",
	headers => ["Referer: https://shop.example/?s=$b64"],
	body => 'x' x 2048));
is($r->{status}, 413, 'oversized body again: 413');

$log = $t->error_log;
($line) = (grep { /too large body/ } split /\n/, $log)[-1];
ok(defined $line, 'the second error-log line is there') or diag($log);
like($line // '', qr/email=b\*+%40example\.com/,
	'a %40 e-mail address is masked, domain kept');
my $tail = substr $b64, 12;
unlike($log, qr/\Q$tail\E|9z%2F9z/,
	'no part of the base64 secret, plain or percent-encoded, is left');

###############################################################################
