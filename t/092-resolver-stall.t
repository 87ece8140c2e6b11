#!/usr/bin/perl

# A host name that never resolves must not stall a worker.  libcurl
# resolves names on a thread of its own; cancelling a call whose name is
# still resolving (the client went away), or timing it out, used to join
# that thread, blocking the worker until the system resolver gave up.
#
# nginx runs in a mount namespace of its own (unshare -m) whose
# /etc/resolv.conf names a DNS server on 127.0.0.77:53 that reads every
# query and never answers; nothing leaves loopback.  A webhook endpoint
# naming such a host is created (its name is probed through libcurl) and
# the client goes away, then the worker must answer at once; a second
# creation is left to time out, and the worker answers all along.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Time::HiRes qw/time sleep/;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg;

plan(skip_all => 'needs root for unshare -m and port 53')
	unless $> == 0
	&& system('unshare -m true >/dev/null 2>&1') == 0;

my $dir = $t->testdir;

# the DNS server that never answers
my $dns = IO::Socket::INET->new(LocalAddr => '127.0.0.77', LocalPort => 53,
	Proto => 'udp', ReuseAddr => 1);
plan(skip_all => "cannot bind 127.0.0.77:53: $!") unless $dns;

$t->plan(7);

my $queries = "$dir/dns.count";
my $dns_pid = fork // die "fork: $!";
if ($dns_pid == 0) {
	my $n = 0;
	while (defined $dns->recv(my $buf, 512)) {
		$n++;
		open my $fh, '>', $queries or exit 1;
		print $fh $n;
		close $fh;
	}
	exit 0;
}
close $dns;

END { kill 'TERM', $dns_pid if $dns_pid; }

$t->write_file('resolv.conf',
	"nameserver 127.0.0.77\noptions timeout:30 attempts:1\n");
$t->write_file('nginx.sh', <<"EOF");
#!/bin/sh
exec unshare -m sh -c 'mount --bind "\$0" /etc/resolv.conf && exec "\$@"' \\
	$dir/resolv.conf @{[PayFlow::Test::nginx_binary()]} "\$@"
EOF
chmod 0755, "$dir/nginx.sh";
$ENV{PAYFLOW_NGINX} = "$dir/nginx.sh";

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

        location = /ok { return 200 "ok\n"; }
        location /v1/admin/ { payflow_admin; }
        location / { payflow_api; }
    }
}

EOF

$t->run;

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'stall' });
my $tenant = $r->{json}{data}{id} // '';
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ role => 'admin' });
my $key = $r->{json}{data}{secret} // '';

sub timed_ok {
	my $start = time;
	my $r = http_parse(http_get('/ok', timeout => 20));
	return ($r->{status} // 0, time - $start);
}

sub create_raw {
	my ($host) = @_;
	my $json = "{\"url\":\"https://$host/hook\","
		. '"events":["payment.succeeded"]}';
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
		PeerPort => $t->port(8080), Proto => 'tcp') or die "connect: $!";
	print $s "POST /v1/webhook_endpoints HTTP/1.1\r\nHost: localhost\r\n"
		. "Authorization: Bearer $key\r\n"
		. "Content-Type: application/json\r\n"
		. 'Content-Length: ' . length($json) . "\r\n\r\n$json";
	return $s;
}

sub resolving {
	return $t->poll(5, sub { -s $queries });
}

###############################################################################
# the client goes away while the name is resolving

my $s = create_raw('stall-one.payflow.test');
ok(resolving(), 'the name is being resolved (the DNS server got a query)');
sleep 0.3;
close $s;
sleep 0.2;

my ($status, $took) = timed_ok();
is($status, 200, 'the worker answers after the cancel');
cmp_ok($took, '<', 1, 'at once, not when the resolver gives up')
	or diag("took ${took}s");

###############################################################################
# a probe left to its 5 s timeout, the client waiting

unlink $queries;
$s = create_raw('stall-two.payflow.test');
ok(resolving(), 'the second name is being resolved');

sleep 5.5;
($status, $took) = timed_ok();
is($status, 200, 'the worker answers after the probe timed out');
cmp_ok($took, '<', 1, 'at once') or diag("took ${took}s");

$s->blocking(0);
my $answer = '';
for (1 .. 20) {
	my $n = sysread($s, my $buf, 4096);
	$answer .= $buf if $n;
	last if $answer =~ /\r\n\r\n.*\}/s;
	sleep 0.1;
}
like($answer, qr/^HTTP\/1\.1 400 .*url_invalid/s,
	'the creation is refused: the name does not resolve')
	or diag($answer);
