#!/usr/bin/perl

# Cluster mode: two nginx instances sharing one Redis admit the configured
# rate together, not twice it.  When Redis is slow (frozen with SIGSTOP)
# or down, requests are decided locally at once, never a 500 and never a
# wait; when Redis comes back, cluster mode resumes by itself.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t1 = PayFlow::Test->new->has_module
	->skip_unless_env('PAYFLOW_REDIS_PORT')->plan(18);
my $t2 = PayFlow::Test->new->has_module;

# both instances use one key space in Redis, apart from other runs
my $run = int(time * 1000);

my $conf = <<"EOF";

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_ratelimit_zone  shared:1m redis;
    payflow_ratelimit_redis 127.0.0.1:%%REDIS_PORT%% timeout=50ms
                            prefix=t033:$run:;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location / {
            payflow_ratelimit zone=shared key=\$http_x_key rate=10r/m
                              burst=10 name=cluster;
            return 200 "ok\\n";
        }
    }
}

EOF

$t1->write_file_expand('nginx.conf', $conf);
$t2->write_file_expand('nginx.conf', $conf);
$t1->run;
$t2->run;

sub get {
	my ($t, $key, $timeout) = @_;
	my $start = time;
	my $r = http_parse(http_request('GET', '/', port => $t->port(8080),
		headers => ["X-Key: $key"], timeout => $timeout // 5));
	$r->{elapsed} = time - $start;
	return $r;
}

# both decide in Redis: a fresh key used once at t1 has one less at t2
# (the local zones would each report a full budget)
sub cluster_ready {
	return $t1->poll(15, sub {
		my $key = 'probe-' . time;
		get($t1, $key, 0.5);
		my $r = get($t2, $key, 0.5);
		return ($r->{headers}{ratelimit} // '') =~ /"cluster";r=8;/;
	}, 0.2);
}

# $n requests alternating between the instances; statuses counted
sub alternate {
	my ($key, $n) = @_;
	my %n;
	for my $i (1 .. $n) {
		my $r = get($i % 2 ? $t1 : $t2, $key);
		$n{$r->{status} // 'none'}++;
	}
	return \%n;
}

###############################################################################
# two instances, one budget

ok(cluster_ready(), 'both instances share one budget in Redis');

my $n = alternate("shared-$run", 16);
is($n->{200}, 10, '16 requests over two instances: exactly 10 admitted');
is($n->{429}, 6, 'the other 6 rejected');

###############################################################################
# Redis slow: frozen, requests are decided locally within the timeout
# instead of waiting for Redis

ok($t1->redis_ctl('STOP'), 'Redis frozen');

my @slow = map { get($t1, "slow-$run-$_") } 1 .. 5;

ok($t1->redis_ctl('CONT'), 'Redis thawed');

is(scalar(grep { ($_->{status} // 0) == 200 } @slow), 5,
	'Redis frozen: fresh keys admitted (decided locally)');
my ($max) = sort { $b <=> $a } map { $_->{elapsed} } @slow;
cmp_ok($max, '<', 0.5, sprintf('and without waiting for Redis (%.3f s)',
	$max));

###############################################################################
# Redis down: answered at once, locally; the operator is told

ok($t1->redis_ctl('stop'), 'Redis stopped');

my @down = map { get($t1, "down-$run") } 1 .. 12;
my $admitted = grep { ($_->{status} // 0) == 200 } @down;
my $rejected = grep { ($_->{status} // 0) == 429 } @down;

is($admitted + $rejected, 12, 'Redis down: every request 200 or 429');
is($admitted, 10, 'the local zone enforces the limit meanwhile');
($max) = sort { $b <=> $a } map { $_->{elapsed} } @down;
cmp_ok($max, '<', 0.5, sprintf('no request waits (%.3f s)', $max));

like($t1->error_log, qr/payflow ratelimit: Redis .*deciding locally/,
	'the fallback is logged');

###############################################################################
# Redis back: cluster mode resumes without a reload

ok($t1->redis_ctl('start'), 'Redis started again');
ok(cluster_ready(), 'both instances reconnect and share again');

$n = alternate("again-$run", 16);
is($n->{200}, 10, 'shared budget again: exactly 10 admitted');

ok($t1->no_worker_crash, 'instance 1: no worker crash');
ok($t2->no_worker_crash, 'instance 2: no worker crash');
unlike($t1->error_log, qr/\[(?:alert|crit|emerg)\]/, 'no alert in the log');

###############################################################################
