#!/usr/bin/perl

# The test harness itself, against a plain nginx without the PayFlow
# module: placeholders, run/stop/reload, the HTTP helpers, the error log
# and the crash detector.  Every other test relies on these.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new(module => 0)->plan(33);

###############################################################################

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;
        default_type text/plain;

        location / {
            return 200 "hello";
        }

        location = /json {
            default_type application/json;
            return 200 '{"a":1,"s":"x"}';
        }

        # a file that does not exist: nginx logs an [error] line
        location = /missing {
            root %%TESTDIR%%/nope;
        }
    }

    server {
        listen       127.0.0.1:%%PORT_8081%%;
        location / {
            return 200 "second $server_port";
        }
    }
}

EOF

# placeholders are expanded once per name, to distinct free ports

my $conf = $t->read_file('nginx.conf');
my ($p1, $p2) = ($t->port(8080), $t->port(8081));

unlike($conf, qr/%%/, 'all placeholders expanded');
like($p1, qr/^\d+$/, 'port(8080) is a number');
isnt($p1, $p2, 'port(8080) differs from port(8081)');
is($t->port(8080), $p1, 'port(8080) is stable');
like($conf, qr/listen\s+127\.0\.0\.1:$p1;/, 'PORT_8080 expanded to port(8080)');
unlike($conf, qr/load_module/, 'no load_module without the module');
like($conf, qr/pid \Q${\$t->testdir}\E\/nginx\.pid;/, 'pid file in testdir');
like($conf, qr/client_body_temp_path \Q${\$t->testdir}\E/,
	'temp paths in testdir');
ok(-d $t->testdir && (stat $t->testdir)[2] & 0005,
	'testdir readable by others (workers run as nobody under root)');

eval { $t->expand('%%NO_SUCH_PLACEHOLDER%%') };
like($@, qr/unknown placeholder/, 'unknown placeholder is an error');

# nginx -t: good config passes, a broken one fails and says why

my ($rc, $out) = $t->test_config;
is($rc, 0, 'test_config: good config exit code 0') or diag($out);
like($out, qr/test is successful/, 'test_config: output says successful');

$t->write_file('bad.conf', "events {}\nhttp { no_such_directive on; }\n");
($rc, $out) = $t->test_config('bad.conf');
isnt($rc, 0, 'test_config: broken config fails');
like($out, qr/unknown directive "no_such_directive"/,
	'test_config: output names the bad directive');

###############################################################################

$t->run;

ok(kill(0, $t->pid), 'nginx master is running');

my $r = http_parse(http_get('/'));
is($r->{status}, 200, 'http_get: status');
is($r->{body}, 'hello', 'http_get: body');
is($r->{headers}{'content-type'}, 'text/plain',
	'http_parse: headers by lowercase name');
ok(!defined $r->{json}, 'http_parse: no json for a text body');

$r = http_parse(http_get('/', port => $p2));
is($r->{body}, "second $p2", 'port option reaches the second server');

$r = http_parse(http_get('/json'));
is_deeply($r->{json}, { a => 1, s => 'x' }, 'http_parse: json decoded');

$r = http_parse(http("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"));
is($r->{body}, 'hello', 'http: raw HTTP/1.0 request');

# chunked bodies are decoded (nginx uses chunked for HTTP/1.1 streaming)
$r = http_parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	. "3\r\n{\"a\r\n4\r\n\":2}\r\n0\r\n\r\n");
is_deeply($r->{json}, { a => 2 }, 'http_parse: chunked body');

# start => 1 hands back the socket; closing it early is a client abort
my $s = http_get('/', start => 1);
ok($s, 'start => 1 returns a socket');
close $s;
$s = http_get('/', start => 1);
like(http_end($s), qr/hello$/, 'http_end reads the rest');

my @many = http_many(50, '/');
is(scalar(grep { ($_->{status} || 0) == 200 && $_->{body} eq 'hello' }
	@many), 50, 'http_many: 50 concurrent responses');

# error log: nginx logs the failed open() of the missing file

$r = http_parse(http_get('/missing'));
is($r->{status}, 404, 'missing file 404');
like($t->error_log, qr/\[error\].*open\(\) ".*nope\/missing" failed/,
	'error_log has the [error] line');

# crash detector: passes here, and does recognise a crash line

ok($t->no_worker_crash, 'no worker crash');
is(scalar PayFlow::Test::crash_lines_in(
	"2026/01/01 00:00:00 [alert] 1#1: worker process 42 exited on "
	. "signal 11 (core dumped)\n[notice] 1#1: signal 17 (SIGCHLD) received"),
	1, 'crash detector finds a worker crash line');

# reload: a changed configuration becomes live without restart

my $new = $t->read_file('nginx.conf');
$new =~ s/return 200 "hello";/return 200 "reloaded";/;
$t->write_file('nginx.conf', $new);
$t->reload;
my $got = $t->poll(5, sub { http_get('/') =~ /reloaded$/ });
ok($got, 'reload: new configuration served');

# stop: the master goes away and the port closes

my $pid = $t->pid;
$t->stop;
ok(!kill(0, $pid), 'stop: master exited');
ok(!defined http_get('/'), 'stop: port no longer accepts');

###############################################################################
