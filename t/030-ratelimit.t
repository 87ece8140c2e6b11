#!/usr/bin/perl

# Rate limiting (payflow_ratelimit, shared-memory mode) is exact and works
# on any location, even a plain "return 200" with no database configured:
# a burst of burst+1 at a fresh key admits exactly burst and the next one
# gets 429 with Retry-After, other keys are untouched, a steady stream is
# admitted at the configured rate; with several limits on one location the
# tighter one bites; rates and bursts can come from variables (plan tiers),
# an invalid value skips the limit instead of failing the request; dry run
# admits everything and says so in the access log; the status is
# configurable.  On a PayFlow API location a limit keyed by the API key
# counts only authenticated requests while a limit keyed by the client
# address counts everything, before any key lookup, and a rejection is the
# JSON error envelope.  Rejections are logged at warn with the policy name
# and without the key's secret.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX qw/ceil/;
use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(85);

###############################################################################
# standalone: plain locations, no payflow_db, no pepper

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    log_format rl '$http_x_tag $status '
                  'result=[$payflow_ratelimit_result] '
                  'remaining=[$payflow_ratelimit_remaining]';
    access_log %%TESTDIR%%/rl.log rl;

    payflow_ratelimit_zone ten_per_s:1m;
    payflow_ratelimit_zone steady:1m;
    payflow_ratelimit_zone multi:1m;
    payflow_ratelimit_zone tiers:1m;
    payflow_ratelimit_zone dry:1m;
    payflow_ratelimit_zone status:1m;
    payflow_ratelimit_zone secret:1m;

    map $http_x_plan $plan_rate {
        default  5r/m;
        scale    50r/m;
        broken   10r/x;
    }

    map $http_x_plan $plan_burst {
        default  2;
        scale    4;
        broken   many;
    }

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /exact {
            payflow_ratelimit zone=ten_per_s key=$http_x_key rate=10r/s
                              burst=10;
            return 200 "ok\n";
        }

        location /steady {
            payflow_ratelimit zone=steady key=$http_x_key rate=20r/s
                              burst=5;
            return 200 "ok\n";
        }

        location /multi {
            payflow_ratelimit zone=multi key=$http_x_key rate=5r/s
                              name=per_second;
            payflow_ratelimit zone=multi key=$http_x_key rate=8r/m
                              name=per_minute;
            return 200 "ok\n";
        }

        location /tier {
            payflow_ratelimit zone=tiers key=$http_x_key rate=$plan_rate
                              name=plan;
            return 200 "ok\n";
        }

        location /tier-burst {
            payflow_ratelimit zone=tiers key=b:$http_x_key rate=1r/h
                              burst=$plan_burst name=plan_burst;
            return 200 "ok\n";
        }

        location /dry {
            payflow_ratelimit zone=dry key=$http_x_key rate=1r/h burst=2;
            payflow_ratelimit_dry_run on;
            return 200 "ok\n";
        }

        location /status {
            payflow_ratelimit zone=status key=$http_x_key rate=1r/h
                              burst=1;
            payflow_ratelimit_status 503;
            return 200 "ok\n";
        }

        location /secret {
            payflow_ratelimit zone=secret key=$http_authorization
                              rate=1r/h burst=1 name=by_auth;
            return 200 "ok\n";
        }

        location /free {
            return 200 "ok\n";
        }
    }
}

EOF

$t->run;

# a GET with the given headers (X-Key, X-Plan, X-Tag for the access log)
sub get {
	my ($uri, %h) = @_;
	return http_parse(http_get($uri,
		headers => [ map { "$_: $h{$_}" } sort keys %h ]));
}

sub statuses {
	my %n;
	$n{$_->{status} // 'none'}++ for @_;
	return join ', ', map { "$n{$_} x $_" } sort keys %n;
}

sub count_status {
	my ($status, @r) = @_;
	return scalar grep { ($_->{status} // 0) == $status } @r;
}

# the items of a RateLimit-Policy value, by policy name
sub policies {
	my ($value) = @_;
	my %p;
	for my $item (split /\s*,\s*/, $value // '') {
		$p{$1} = $item if $item =~ /^"([^"]+)"/;
	}
	return \%p;
}

# access log lines of one tag, once the log has at least $n of them
sub log_lines {
	my ($tag, $n) = @_;
	my $lines = $t->poll(3, sub {
		my @l = grep { /^\Q$tag\E / }
			split /\n/, $t->read_file('rl.log');
		return @l >= $n ? \@l : undef;
	}, 0.05);
	return @{$lines || []};
}

###############################################################################
# exactness: 11 requests at once at a fresh key, burst 10

my @r = http_many(11, '/exact', headers => ['X-Key: fresh-a']);
is(count_status(200, @r), 10, 'burst of 11 at burst=10: exactly 10 admitted')
	or diag(statuses(@r));
is(count_status(429, @r), 1, 'burst of 11 at burst=10: exactly one 429')
	or diag(statuses(@r));

my ($rej) = grep { ($_->{status} // 0) == 429 } @r;
$rej //= {};
is($rej->{headers}{'retry-after'}, '1', '429 at 10r/s: Retry-After 1');
like($rej->{body} // '', qr{<title>429 Too Many Requests</title>},
	'429 on a plain location: nginx\'s own page');
is($rej->{headers}{ratelimit}, '"ten_per_s";r=0;t=1',
	'429: RateLimit names the zone as policy, nothing remaining');

my $r = get('/exact', 'X-Key' => 'fresh-a');
is($r->{status}, 429, 'the same key right after: still 429');

$r = get('/exact', 'X-Key' => 'fresh-b');
is($r->{status}, 200, 'another key is unaffected');
is($r->{headers}{ratelimit}, '"ten_per_s";r=9;t=1',
	'another key: its own full burst');

# a request without the key's header: the limit does not apply
@r = http_many(15, '/exact');
is(count_status(200, @r), 15, 'empty key: 15 at once, all admitted')
	or diag(statuses(@r));
ok(!grep({ exists $_->{headers}{ratelimit} } @r),
	'empty key: no RateLimit header');

# after a fresh burst, one more request per emission interval (0.1 s)
my $tb = time;
@r = http_many(10, '/exact', headers => ['X-Key: fresh-c']);
is(count_status(200, @r), 10, 'burst of 10 at burst=10: all admitted')
	or diag(statuses(@r));
sleep(0.25 - (time - $tb)) if time - $tb < 0.25;
@r = map { get('/exact', 'X-Key' => 'fresh-c') } 1 .. 4;
my $refill = join(' ', map { $_->{status} // 'none' } @r);

# two tokens back after 0.25 s; a third if the four requests straddle
# 0.3 s on a loaded machine (exactness is proven by the burst and the
# steady-rate tests)
like($refill, qr/^200 200 (?:200 )?429/,
	"0.25 s after the burst at 10r/s: two more admitted, then 429 "
	. "($refill)");

like($t->error_log, qr/\[warn\].*ten_per_s/,
	'rejection logged at warn with the policy name');

###############################################################################
# steady rate: 20r/s, as fast as possible for 3 s; a burst of 5 banks
# what a pause of up to 250 ms on a loaded machine would otherwise lose

my ($admitted, $rejected, $other) = (0, 0, 0);
my $start = time;
while (time - $start < 3) {
	my $s = get('/steady', 'X-Key' => 'steady')->{status} // 0;
	if ($s == 200) { $admitted++ } elsif ($s == 429) { $rejected++ }
	else { $other++ }
}

my $want = 20 * 3 + 5;
ok(abs($admitted - $want) <= 0.02 * $want,
	"steady 3 s at 20r/s burst 5: $admitted admitted, $want expected "
	. '(within 2%)');
ok($rejected > $admitted, "steady: the rest rejected ($rejected)");
is($other, 0, 'steady: no other status');

###############################################################################
# two limits on one location: the tighter one bites, both are reported

# 5r/s bites first: the 6th request at once
@r = map { get('/multi', 'X-Key' => 'multi-1') } 1 .. 6;
is(join(' ', map { $_->{status} // 'none' } @r), '200 200 200 200 200 429',
	'5r/s and 8r/m: the 6th request at once is rejected');

my $p = policies($r[0]{headers}{'ratelimit-policy'});
is_deeply([sort keys %$p], ['per_minute', 'per_second'],
	'both limits in RateLimit-Policy')
	or diag($r[0]{headers}{'ratelimit-policy'});
is($p->{per_second}, '"per_second";q=5;w=1', 'per_second policy item');
is($p->{per_minute}, '"per_minute";q=8;w=60', 'per_minute policy item');

is($r[0]{headers}{ratelimit}, '"per_second";r=4;t=1',
	'first request: RateLimit reports the lower remaining (per_second)');
is($r[5]{headers}{'retry-after'}, '1', 'per_second 429: Retry-After 1');
is($r[5]{headers}{ratelimit}, '"per_second";r=0;t=1',
	'per_second 429: RateLimit names per_second');

# 8r/m bites later: 5 now, 3 more after a second, then nothing for 6 s
my $t0 = time;
@r = map { get('/multi', 'X-Key' => 'multi-2') } 1 .. 5;
sleep 1.2;
push @r, map { get('/multi', 'X-Key' => 'multi-2') } 1 .. 4;
my $elapsed = time - $t0;

is(join(' ', map { $_->{status} // 'none' } @r),
	'200 200 200 200 200 200 200 200 429',
	'5r/s and 8r/m: 5 at once, 3 more a second later, then 429');
# per_minute is fully replenished 60 s after the first request, which was
# between 1 and 2 s ago
is($r[7]{headers}{ratelimit}, '"per_minute";r=0;t=59',
	'8th request: RateLimit reports per_minute, nothing remaining');
is($r[8]{headers}{ratelimit}, '"per_minute";r=0;t=59',
	'per_minute 429: RateLimit names per_minute');

my $ra = $r[8]{headers}{'retry-after'} // 0;
ok(abs($ra - ceil(7.5 - $elapsed)) <= 1,
	"per_minute 429: Retry-After $ra, until the next 7.5 s slot");

###############################################################################
# tiers: the rate from a map on X-Plan, burst defaults to its count

@r = http_many(6, '/tier', headers => ['X-Key: tier-basic']);
is(count_status(200, @r), 5, 'default plan 5r/m: 5 of 6 admitted')
	or diag(statuses(@r));
($r) = grep { ($_->{status} // 0) == 200 } @r;
is($r->{headers}{'ratelimit-policy'}, '"plan";q=5;w=60',
	'default plan: q=5;w=60');

@r = http_many(51, '/tier', headers => ['X-Key: tier-scale',
	'X-Plan: scale']);
is(count_status(200, @r), 50, 'scale plan 50r/m: 50 of 51 admitted')
	or diag(statuses(@r));
($r) = grep { ($_->{status} // 0) == 200 } @r;
is($r->{headers}{'ratelimit-policy'}, '"plan";q=50;w=60',
	'scale plan: q=50;w=60');

my $before = length $t->error_log;
@r = map { get('/tier', 'X-Key' => 'tier-broken', 'X-Plan' => 'broken') }
	1 .. 8;
is(count_status(200, @r), 8, 'rate variable "10r/x": the limit is skipped')
	or diag(statuses(@r));
ok(!grep({ exists $_->{headers}{ratelimit} } @r),
	'rate variable "10r/x": no RateLimit header');
my $logged = substr($t->error_log, $before);
like($logged, qr/\[error\].*ratelimit/i,
	'rate variable "10r/x": an error is logged')
	or diag($logged);

@r = map { get('/tier-burst', 'X-Key' => 'k1') } 1 .. 3;
is(join(' ', map { $_->{status} // 'none' } @r), '200 200 429',
	'burst variable, default plan 2: 2 admitted');
is($r[0]{headers}{'ratelimit-policy'}, '"plan_burst";q=2;w=7200',
	'burst variable 2 at 1r/h: q=2;w=7200');

@r = map { get('/tier-burst', 'X-Key' => 'k2', 'X-Plan' => 'scale') } 1 .. 5;
is(join(' ', map { $_->{status} // 'none' } @r), '200 200 200 200 429',
	'burst variable, scale plan 4: 4 admitted');

$before = length $t->error_log;
@r = map { get('/tier-burst', 'X-Key' => 'k3', 'X-Plan' => 'broken') } 1 .. 5;
is(count_status(200, @r), 5, 'burst variable "many": the limit is skipped')
	or diag(statuses(@r));
$logged = substr($t->error_log, $before);
like($logged, qr/\[error\].*ratelimit/i,
	'burst variable "many": an error is logged')
	or diag($logged);

###############################################################################
# dry run: nothing rejected, the access log tells

@r = map { get('/dry', 'X-Key' => 'dry', 'X-Tag' => 'dry') } 1 .. 5;
is(count_status(200, @r), 5, 'dry run at 1r/h burst 2: 5 of 5 admitted')
	or diag(statuses(@r));
ok(!grep({ exists $_->{headers}{'retry-after'} } @r),
	'dry run: no Retry-After');

my @lines = log_lines('dry', 5);
is(scalar @lines, 5, 'dry run: 5 access log lines');
like($lines[0] // '', qr/ 200 result=\[passed\] remaining=\[1\]$/,
	'dry run, 1st: passed, 1 remaining');
like($lines[1] // '', qr/ 200 result=\[passed\] remaining=\[0\]$/,
	'dry run, 2nd: passed, 0 remaining');
is(scalar(grep { / 200 result=\[dry_run\] / } @lines[2 .. 4]), 3,
	'dry run, 3rd to 5th: logged as dry_run')
	or diag(join "\n", @lines);

# and the other results, for comparison
get('/status', 'X-Key' => 'log', 'X-Tag' => 'limited') for 1 .. 2;
get('/free', 'X-Tag' => 'free');
@lines = (log_lines('limited', 2), log_lines('free', 1));
like($lines[0] // '', qr/ 200 result=\[passed\] remaining=\[0\]$/,
	'access log: an admitted request is "passed"');
like($lines[1] // '', qr/ 503 result=\[rejected\] remaining=\[0\]$/,
	'access log: a rejected request is "rejected"');
like($lines[2] // '', qr/ 200 result=\[-?\] remaining=\[-?\]$/,
	'access log: no limit applied, empty result');

###############################################################################
# payflow_ratelimit_status 503

@r = map { get('/status', 'X-Key' => 'status') } 1 .. 2;
is($r[0]{status}, 200, 'status 503: first request admitted');
is($r[1]{status}, 503, 'status 503: second request rejected with 503');
like($r[1]{body} // '', qr{<title>503 Service Temporarily Unavailable},
	'status 503: nginx\'s own 503 page');
is($r[1]{headers}{'retry-after'}, '3600', 'status 503: Retry-After 3600');

###############################################################################
# a secret as the key: the rejection is logged without it

my ($secret) = $t->pf_key('test', '--tenant', 'ten_rl', '--role', 'viewer');
@r = map { get('/secret', Authorization => "Bearer $secret") } 1 .. 2;
is($r[1]{status}, 429, 'keyed by Authorization: second request 429');
like($t->error_log, qr/\[warn\].*by_auth/,
	'keyed by Authorization: rejection logged with the policy name');
unlike($t->error_log, qr/\Q$secret\E/,
	'keyed by Authorization: the secret is not logged');
my $tail = substr($secret, -20);
unlike($t->error_log, qr/\Q$tail\E/,
	'keyed by Authorization: not even the last 20 characters');

###############################################################################

$t->assert_no_crash('standalone: no worker crash');

$t->stop;
is(scalar($t->alert_lines), 0, 'standalone: no [alert]/[crit]/[emerg]')
	or diag(join "\n", $t->alert_lines);

###############################################################################
# a PayFlow API location: per key after authentication, per address before

my $api = PayFlow::Test->new->has_module->has_pg;

my ($key, $key_hash) = $api->pf_key('test', '--tenant', 'ten_rl',
	'--role', 'viewer', '--id', 'key_static_rl');
my ($unknown) = $api->pf_key('test', '--tenant', 'ten_rl', '--role', 'viewer');

$api->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    payflow_static_key $key_hash tenant=ten_rl mode=test role=viewer
                       id=key_static_rl;

    payflow_ratelimit_zone keys:1m;
    payflow_ratelimit_zone addrs:1m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location / {
            payflow_api;
            payflow_ratelimit zone=keys key=\$payflow_key_id rate=3r/h
                              name=per_key;
            payflow_ratelimit zone=addrs key=\$binary_remote_addr
                              rate=20r/h burst=10 name=per_addr;
        }
    }
}

EOF

$api->run;

my $RID = qr/^req_[0-9A-Za-z]{24}$/;

# without credentials: only the address limit applies
@r = map { api(undef, 'GET', '/v1/me') } 1 .. 4;
is(join(' ', map { $_->{status} // 'none' } @r), '401 401 401 401',
	'unauthenticated: 401, admitted by the limits');
is($r[0]{headers}{'ratelimit-policy'}, '"per_addr";q=10;w=1800',
	'unauthenticated: only per_addr applies');
is(join(' ', map { $_->{headers}{ratelimit} // 'none' } @r),
	join(' ', map { "\"per_addr\";r=$_;t=" . 180 * (10 - $_) } 9, 8, 7, 6),
	'unauthenticated: counted by per_addr');

# with the key: both apply, the unauthenticated ones did not count per key
@r = map { bearer($key, 'GET', '/v1/me') } 1 .. 4;
is(join(' ', map { $_->{status} // 'none' } @r), '200 200 200 429',
	'authenticated: 3 admitted per key (3r/h), the 4th 429');

$p = policies($r[0]{headers}{'ratelimit-policy'});
is_deeply([sort keys %$p], ['per_addr', 'per_key'],
	'authenticated: both limits in RateLimit-Policy')
	or diag($r[0]{headers}{'ratelimit-policy'});
is($p->{per_key}, '"per_key";q=3;w=3600', 'per_key policy item');
is(join(' ', map { $_->{headers}{ratelimit} // 'none' } @r[0 .. 2]),
	'"per_key";r=2;t=1200 "per_key";r=1;t=2400 "per_key";r=0;t=3600',
	'authenticated: RateLimit reports per_key, one less each time');

$r = $r[3];
is($r->{headers}{'retry-after'}, '1200', 'per_key 429: Retry-After 1200');
like($r->{headers}{'content-type'} // '', qr{^application/json\b},
	'per_key 429: application/json');
is($r->{json}{success}, JSON::PP::false, 'per_key 429: success false')
	or diag($r->{raw});
is($r->{json}{error}{type}, 'rate_limit_error',
	'per_key 429: error.type rate_limit_error');
is($r->{json}{error}{code}, 'rate_limited',
	'per_key 429: error.code rate_limited');
like($r->{headers}{'x-request-id'} // '', $RID, 'per_key 429: X-Request-Id');
is($r->{json}{meta}{request_id}, $r->{headers}{'x-request-id'},
	'per_key 429: meta.request_id equals the header');
is($r->{headers}{ratelimit}, '"per_key";r=0;t=3600',
	'per_key 429: RateLimit names per_key');

# the address limit runs out on unauthenticated requests: 429, not 401
my @seq;
for (1 .. 10) {
	$r = api(undef, 'GET', '/v1/me', undef,
		headers => ['X-Request-Id: addr-limited']);
	push @seq, $r->{status} // 'none';
	last if $seq[-1] ne '401';
}
is($seq[-1], '429', 'per_addr exhausted: unauthenticated request gets 429')
	or diag("@seq");
ok(@seq >= 3 && @seq <= 4, 'per_addr: 2 or 3 unauthenticated left after '
	. '7 (or 8) counted requests') or diag("@seq");
is($r->{json}{error}{code}, 'rate_limited', 'per_addr 429: rate_limited')
	or diag($r->{raw});
is($r->{json}{error}{type}, 'rate_limit_error',
	'per_addr 429: rate_limit_error');
is($r->{headers}{'x-request-id'}, 'addr-limited',
	'per_addr 429: client X-Request-Id echoed');
is($r->{json}{meta}{request_id}, 'addr-limited',
	'per_addr 429: meta.request_id');
is($r->{headers}{'retry-after'}, '180', 'per_addr 429: Retry-After 180');
is($r->{headers}{ratelimit}, '"per_addr";r=0;t=1800',
	'per_addr 429: RateLimit names per_addr');

# limited by address before any key lookup: an unknown key is not even
# looked up (no 401), a wrong scheme neither
$r = bearer($unknown, 'GET', '/v1/me');
is($r->{status}, 429, 'per_addr exhausted: unknown key gets 429, not 401')
	or diag($r->{raw});
$r = api('Basic Zm9vOmJhcg==', 'GET', '/v1/me');
is($r->{status}, 429, 'per_addr exhausted: Basic credentials get 429');

$api->assert_no_crash('PayFlow location: no worker crash');

$api->stop;
is(scalar($api->alert_lines), 0, 'PayFlow location: no [alert]/[crit]/[emerg]')
	or diag(join "\n", $api->alert_lines);

###############################################################################
