#!/usr/bin/perl

# The shared-memory zone of payflow_ratelimit: a zone far too small for the
# keys it sees (32k, thousands of keys) keeps answering every request with
# 200 or 429 and never crashes, evicting the least recently used keys: a key
# exhausted at the start is fresh again later and gets its full burst,
# while a key used all along stays limited.  A reload (HUP) keeps the
# counters: a key exhausted before is still refused by the new worker.
# "nginx -t" refuses, with a message naming the problem, an unknown zone, a
# bad rate, a zone too small, burst=0 and a limit without key=.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->plan(32);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_ratelimit_zone tiny:32k;
    payflow_ratelimit_zone keep:1m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /tiny {
            payflow_ratelimit zone=tiny key=$http_x_key rate=1r/h burst=3;
            return 200 "ok\n";
        }

        location /keep {
            payflow_ratelimit zone=keep key=$http_x_key rate=1r/h burst=2;
            return 200 "ok\n";
        }

        location /pid {
            return 200 "$pid";
        }
    }
}

EOF

$t->run;

sub get {
	my ($uri, $key) = @_;
	return http_parse(http_get($uri,
		headers => defined $key ? ["X-Key: $key"] : []));
}

sub status_seq {
	my ($n, $uri, $key) = @_;
	return join ' ', map { get($uri, $key)->{status} // 'none' } 1 .. $n;
}

###############################################################################
# a 32k zone and 3000 keys

is(status_seq(4, '/tiny', 'first'), '200 200 200 429',
	'tiny zone: key "first" exhausted (burst 3)');
is(status_seq(4, '/tiny', 'hot'), '200 200 200 429',
	'tiny zone: key "hot" exhausted (burst 3)');

my (%seen, $hot_admitted, $hot_requests);
my $fresh_refused = 0;
my $start = time;

for my $i (1 .. 3000) {
	my $s = get('/tiny', "churn-$i")->{status} // 'none';
	$seen{$s}++;
	$fresh_refused++ if $s ne '200';

	# "hot" is used all the time, so never the least recently used
	if ($i % 20 == 0) {
		my $h = get('/tiny', 'hot')->{status} // 'none';
		$seen{$h}++;
		$hot_requests++;
		$hot_admitted++ if $h eq '200';
	}
}

my $took = time - $start;
note(sprintf '%d requests in %.1f s', 3000 + $hot_requests, $took);

is(join(', ', map { "$_: $seen{$_}" } grep { !/^(?:200|429)$/ } sort
	keys %seen), '', '3150 requests: every one answered 200 or 429');
is($fresh_refused, 0, '3000 distinct keys: every fresh key admitted');
ok(!$hot_admitted, "the key in constant use stays limited ($hot_requests "
	. 'requests, none admitted)');
ok($t->no_worker_crash, 'tiny zone: no worker crash');

# the key of the start was evicted: it is fresh again, with its full burst
my @r = map { get('/tiny', 'first') } 1 .. 4;
is(join(' ', map { $_->{status} // 'none' } @r), '200 200 200 429',
	'key "first" after 3000 others: evicted, full burst of 3 again');
is($r[0]{headers}{ratelimit}, '"tiny";r=2;t=3600',
	'key "first" after eviction: RateLimit of a fresh key');

# still limiting after all that churn
is(status_seq(5, '/tiny', 'after-churn'), '200 200 200 429 429',
	'a new key after the churn: burst of 3, then 429');

###############################################################################
# reload keeps the counters

is(status_seq(3, '/keep', 'kept'), '200 200 429',
	'before reload: key "kept" exhausted (burst 2)');
my $old_pid = get('/pid')->{body};
like($old_pid, qr/^\d+$/, "worker before reload: $old_pid");

ok($t->reload, 'reload (HUP): a new worker started');

# the old worker may still take a connection or two while it closes its
# listening socket: wait for the new one
my $new_pid = $t->poll(5, sub {
	my $p = get('/pid')->{body} // '';
	return $p =~ /^\d+$/ && $p ne $old_pid ? $p : undef;
}, 0.05);
ok($new_pid, 'a new worker answers after the reload')
	or diag('still ' . $old_pid);

my $r = get('/keep', 'kept');
is($r->{status}, 429, 'after reload: key "kept" still 429');
is($r->{headers}{'retry-after'}, '3600',
	'after reload: Retry-After still counts from before (3600)');
is($r->{headers}{ratelimit}, '"keep";r=0;t=7200',
	'after reload: RateLimit still shows the burst used up');
is(status_seq(3, '/keep', 'after-reload'), '200 200 429',
	'after reload: a new key gets its burst');

# the 32k zone came through the reload too
is(status_seq(1, '/tiny', 'hot'), '429', 'after reload: "hot" still limited');

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
# nginx -t: configuration errors, each named

my %good = (
	zone => 'payflow_ratelimit_zone z:1m;',
	limit => 'payflow_ratelimit zone=z key=$http_x_key rate=10r/s burst=5;',
);

sub check {
	my ($name, %c) = @_;
	%c = (%good, %c);
	$t->write_file_expand("$name.conf", <<"EOF");
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    $c{zone}

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location / {
            $c{limit}
            return 200;
        }
    }
}
EOF
	return $t->test_config("$name.conf");
}

# the [emerg] message, without " in <file>:<line>"
sub emerg {
	my ($out) = @_;
	my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
	return '' unless defined $line;
	$line =~ s/^.*?\[emerg\]\s*(?:\d+#\d+:\s*)?//;
	$line =~ s/ in \S+:\d+\s*$//;
	return $line;
}

my ($rc, $out) = check('c0');
is($rc, 0, 'nginx -t: the valid configuration passes') or diag($out);
like($out, qr/test is successful/, 'nginx -t: test is successful');

my $n = 0;

for my $case (
	[ 'unknown zone', qr/\bnope\b/,
		limit => 'payflow_ratelimit zone=nope key=$http_x_key '
			. 'rate=10r/s;' ],
	[ 'bad rate 10r/x', qr{10r/x},
		limit => 'payflow_ratelimit zone=z key=$http_x_key '
			. 'rate=10r/x;' ],
	[ 'zone size 4k', qr/too small|\b4k\b/i,
		zone => 'payflow_ratelimit_zone z:4k;' ],
	[ 'burst=0', qr/burst/,
		limit => 'payflow_ratelimit zone=z key=$http_x_key rate=10r/s '
			. 'burst=0;' ],
	[ 'no key=', qr/\bkey\b/,
		limit => 'payflow_ratelimit zone=z rate=10r/s burst=5;' ])
{
	my ($what, $re, %c) = @$case;
	my ($rc, $out) = check('c' . ++$n, %c);
	isnt($rc, 0, "nginx -t fails: $what");
	like(emerg($out), $re, "nginx -t: $what: the message says so")
		or diag($out);
}

###############################################################################
