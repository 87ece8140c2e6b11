#!/usr/bin/perl

# The rate limit headers of draft-ietf-httpapi-ratelimit-headers, value by
# value: RateLimit-Policy "<name>";q=<burst>;w=<ceil(burst * interval)>
# and RateLimit "<name>";r=<remaining>;t=<seconds to full, rounded up> on
# every request a limit applies to, admitted or rejected, for per-second,
# per-minute, per-hour and per-day rates, default and explicit bursts and
# emission intervals that are not whole seconds; remaining goes down by one
# per request; a 429 adds Retry-After (seconds until the next admission,
# rounded up).  Limits configured at server level apply to its locations.
# No header at all where no limit applies: a location without limits, or a
# limit whose key is empty.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->plan(49);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_ratelimit_zone hdr:1m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /s {
            payflow_ratelimit zone=hdr key=$http_x_key rate=100r/s
                              burst=100 name=burst;
            return 200 "ok\n";
        }

        location /m {
            payflow_ratelimit zone=hdr key=$http_x_key rate=10r/m burst=5
                              name=per_minute;
            return 200 "ok\n";
        }

        location /h {
            payflow_ratelimit zone=hdr key=$http_x_key rate=60r/h
                              name=hourly;
            return 200 "ok\n";
        }

        location /d {
            payflow_ratelimit zone=hdr key=$http_x_key rate=48r/d burst=2
                              name=daily;
            return 200 "ok\n";
        }

        location /half {
            payflow_ratelimit zone=hdr key=$http_x_key rate=2r/s burst=5
                              name=half;
            return 200 "ok\n";
        }

        location /seven {
            payflow_ratelimit zone=hdr key=$http_x_key rate=7r/m burst=2;
            return 200 "ok\n";
        }

        location /two {
            payflow_ratelimit zone=hdr key=slow:$http_x_key rate=1r/h
                              burst=10 name=slow;
            payflow_ratelimit zone=hdr key=fast:$http_x_key rate=10r/s
                              burst=3 name=fast;
            return 200 "ok\n";
        }

        location /none {
            return 200 "ok\n";
        }
    }

    server {
        listen       127.0.0.1:%%PORT_8081%%;
        server_name  localhost;

        payflow_ratelimit zone=hdr key=$http_x_key rate=1r/m burst=3
                          name=server_wide;

        location / {
            return 200 "ok\n";
        }
    }
}

EOF

$t->run;

sub get {
	my ($uri, $key, %opts) = @_;
	return http_parse(http_get($uri,
		headers => defined $key ? ["X-Key: $key"] : [], %opts));
}

# n requests in a row; "status RateLimit [Retry-After]" of each
sub seq {
	my ($n, $uri, $key, %opts) = @_;
	my @r = map { get($uri, $key, %opts) } 1 .. $n;
	return map {
		join ' ', $_->{status} // 'none',
			$_->{headers}{ratelimit} // '-',
			defined $_->{headers}{'retry-after'}
				? "retry=$_->{headers}{'retry-after'}" : ()
	} @r;
}

###############################################################################
# the example of the contract: 100r/s, burst 100, first request

my $r = get('/s', 'ex');
is($r->{status}, 200, '100r/s: admitted');
is($r->{headers}{'ratelimit-policy'}, '"burst";q=100;w=1',
	'100r/s burst 100: RateLimit-Policy "burst";q=100;w=1');
is($r->{headers}{ratelimit}, '"burst";r=99;t=1',
	'100r/s burst 100: RateLimit "burst";r=99;t=1');
ok(!exists $r->{headers}{'retry-after'}, 'admitted: no Retry-After');

# remaining goes down by one per request: at 60r/h nothing comes back
# during the test (at 100r/s a loaded machine may take the 10 ms that
# return one), and t grows by one interval each time
my @s = map { get('/h', 'dec')->{headers}{ratelimit} // '-' } 1 .. 4;
is_deeply(\@s, [ map { "\"hourly\";r=" . (60 - $_) . ";t=" . 60 * $_ }
	1 .. 4 ], '60r/h: r=59, 58, 57, 56 and t=60, 120, 180, 240')
	or diag(join ', ', @s);

###############################################################################
# per minute, explicit burst below the count: T = 6 s

my @r = map { get('/m', 'pm') } 1 .. 7;
is($r[0]{headers}{'ratelimit-policy'}, '"per_minute";q=5;w=30',
	'10r/m burst 5: q=5;w=30');
is($r[$_]{headers}{'ratelimit-policy'}, '"per_minute";q=5;w=30',
	'10r/m: same policy on request ' . ($_ + 1)) for 4 .. 6;

my @got = map {
	join ' ', $_->{status} // 'none', $_->{headers}{ratelimit} // '-',
		$_->{headers}{'retry-after'} // '-'
} @r;
is_deeply(\@got, [
	'200 "per_minute";r=4;t=6 -',
	'200 "per_minute";r=3;t=12 -',
	'200 "per_minute";r=2;t=18 -',
	'200 "per_minute";r=1;t=24 -',
	'200 "per_minute";r=0;t=30 -',
	'429 "per_minute";r=0;t=30 6',
	'429 "per_minute";r=0;t=30 6',
], '10r/m burst 5: r 4..0, t 6..30, then 429 with Retry-After 6')
	or diag(join "\n", @got);

# another key starts full
is(get('/m', 'pm2')->{headers}{ratelimit}, '"per_minute";r=4;t=6',
	'10r/m: another key starts at r=4');

###############################################################################
# per hour, default burst = count: T = 60 s

@s = seq(3, '/h', 'ph');
is($s[0], '200 "hourly";r=59;t=60', '60r/h: first r=59;t=60');
is($s[1], '200 "hourly";r=58;t=120', '60r/h: second r=58;t=120');
is($s[2], '200 "hourly";r=57;t=180', '60r/h: third r=57;t=180');
is(get('/h', 'ph2')->{headers}{'ratelimit-policy'}, '"hourly";q=60;w=3600',
	'60r/h, default burst: q=60;w=3600');

###############################################################################
# per day, burst 2: T = 1800 s

$r = get('/d', 'pd');
is($r->{headers}{'ratelimit-policy'}, '"daily";q=2;w=3600',
	'48r/d burst 2: q=2;w=3600');
is($r->{headers}{ratelimit}, '"daily";r=1;t=1800', '48r/d: r=1;t=1800');
@s = seq(2, '/d', 'pd');
is($s[0], '200 "daily";r=0;t=3600', '48r/d: r=0;t=3600');
is($s[1], '429 "daily";r=0;t=3600 retry=1800',
	'48r/d: 429 with Retry-After 1800');

###############################################################################
# T = 0.5 s: w and t are rounded up, Retry-After is at least 1

@r = map { get('/half', 'hf') } 1 .. 6;
is($r[0]{headers}{'ratelimit-policy'}, '"half";q=5;w=3',
	'2r/s burst 5: w = ceil(2.5) = 3');

@got = map {
	join ' ', $_->{status} // 'none', $_->{headers}{ratelimit} // '-',
		$_->{headers}{'retry-after'} // '-'
} @r;
is($got[0], '200 "half";r=4;t=1 -', '2r/s: 0.5 s to full rounds up to 1');
is($got[1], '200 "half";r=3;t=1 -', '2r/s: just under 1 s rounds up to 1');
is($got[2], '200 "half";r=2;t=2 -', '2r/s: just under 1.5 s rounds up to 2');
is($got[3], '200 "half";r=1;t=2 -', '2r/s: just under 2 s rounds up to 2');
is($got[4], '200 "half";r=0;t=3 -', '2r/s: just under 2.5 s rounds up to 3');
is($got[5], '429 "half";r=0;t=3 1',
	'2r/s: 429, Retry-After just under 0.5 s rounds up to 1');

###############################################################################
# T = 60/7 s = 8.571 s: rounding up, not to the nearest

@r = map { get('/seven', 'sv') } 1 .. 3;
is($r[0]{headers}{'ratelimit-policy'}, '"hdr";q=2;w=18',
	'7r/m burst 2: no name=, the zone names it; w = ceil(17.14) = 18');
is($r[0]{headers}{ratelimit}, '"hdr";r=1;t=9', '7r/m: t = ceil(8.57) = 9');
is($r[1]{headers}{ratelimit}, '"hdr";r=0;t=18', '7r/m: t = ceil(17.14) = 18');
is($r[2]{status}, 429, '7r/m: third request 429');
is($r[2]{headers}{'retry-after'}, '9',
	'7r/m: Retry-After = ceil(8.57) = 9');
is($r[2]{headers}{ratelimit}, '"hdr";r=0;t=18', '7r/m: 429 RateLimit');
is($r[2]{headers}{'ratelimit-policy'}, '"hdr";q=2;w=18',
	'7r/m: 429 RateLimit-Policy');

###############################################################################
# two limits: RateLimit reports the one with the lowest remaining

# "fast" is full again 0.15 s after each request, so it always has 2 left
# while "slow" goes 9, 8, ... 3: "fast" is the lowest throughout (even when
# "slow" has used up the larger share of its burst)
my @two;
for (1 .. 7) {
	push @two, get('/two', 'tw')->{headers}{ratelimit} // '-';
	sleep 0.15;
}
is_deeply(\@two, [ ('"fast";r=2;t=1') x 7 ],
	'two limits: RateLimit reports the lowest remaining, 7 times')
	or diag(join ', ', @two);

###############################################################################
# a limit at server level applies to the server's locations

my $p8081 = $t->port(8081);
@s = seq(4, '/', 'srv', port => $p8081);
is($s[0], '200 "server_wide";r=2;t=60', 'server level: r=2;t=60');
is($s[1], '200 "server_wide";r=1;t=120', 'server level: r=1;t=120');
is($s[2], '200 "server_wide";r=0;t=180', 'server level: r=0;t=180');
is($s[3], '429 "server_wide";r=0;t=180 retry=60',
	'server level: 429, Retry-After 60');
is(get('/', 'srv2', port => $p8081)->{headers}{'ratelimit-policy'},
	'"server_wide";q=3;w=180', 'server level: q=3;w=180');

###############################################################################
# no limit, no headers

for my $case (['/none', 'k', 'location without limits'],
	['/none', undef, 'location without limits, no key header'],
	['/m', undef, 'limited location, empty key'],
	['/d', '', 'limited location, key header present but empty'])
{
	my ($uri, $key, $what) = @$case;
	my @r = map { get($uri, $key) } 1 .. 3;
	is(join(' ', map { $_->{status} // 'none' } @r), '200 200 200',
		"$what: admitted");
	ok(!grep({ exists $_->{headers}{ratelimit}
			|| exists $_->{headers}{'ratelimit-policy'}
			|| exists $_->{headers}{'retry-after'} } @r),
		"$what: no RateLimit, RateLimit-Policy or Retry-After");
}

###############################################################################

$t->assert_no_crash;

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
