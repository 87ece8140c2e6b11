#!/usr/bin/perl

# /metrics: the Prometheus text format (checked by promtool), aggregated
# over all workers from shared memory; requests counted by route template
# (never by raw id), method and status, with latency histograms;
# authentication, key cache, PostgreSQL pool and rate-limit counters.
# Error-log lines about a request end with its request id.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(23);

my ($key, $hash) = $t->pf_key('test', '--tenant', 'ten_metrics',
	'--role', 'viewer');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    client_max_body_size 1k;

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%% pool=3;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    payflow_static_key $hash tenant=ten_metrics mode=test role=viewer;

    payflow_ratelimit_zone metrics_rl:1m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location = /readyz  { payflow_ready; }
        location = /metrics { payflow_metrics; }

        location / {
            payflow_ratelimit zone=metrics_rl key=\$http_x_key rate=2r/m
                              name=probe;
            payflow_api;
        }
    }
}

EOF

$t->run;

my %auth = (headers => ["Authorization: Bearer $key"]);

http_get('/readyz') for 1 .. 2;
http_request('GET', '/v1/me', %auth) for 1 .. 3;
http_request('GET', '/v1/api_keys/key_RAWIDNEVERLABEL', %auth);
http_request('GET', '/v1/me');
http_request('GET', '/v1/no/such/thing', %auth);
http_request('GET', '/v1/me', headers => [@{$auth{headers}}, 'X-Key: k'])
	for 1 .. 3;

my $big = http_parse(http_request('POST', '/v1/api_keys', %auth,
	body => 'x' x 2048));

my $r = http_parse(http_get('/metrics'));
my $m = $r->{body} // '';

is($r->{status}, 200, '/metrics: 200');
like($r->{headers}{'content-type'} // '', qr{^text/plain; version=0\.0\.4},
	'/metrics: Prometheus text content type');

SKIP: {
	my $promtool = -x '/usr/bin/promtool' ? '/usr/bin/promtool' : undef;
	skip 'promtool not installed (package prometheus)', 1 unless $promtool;

	$t->write_file('metrics.txt', $m);
	my $out = `$promtool check metrics < $t->{dir}/metrics.txt 2>&1`;
	is($? >> 8, 0, 'promtool check metrics accepts it') or diag($out);
}

sub value {
	my ($series) = @_;
	return $m =~ /^\Q$series\E (\S+)$/m ? $1 : undef;
}

# 3 + 2 with X-Key; the third X-Key request is refused by the rate
# limit before authentication, and so is not authenticated either
is(value('payflow_http_requests_total{route="/v1/me",method="GET",'
	. 'status="200"}'), 5, '/v1/me 200 counted by route template');
is(value('payflow_http_requests_total{route="/v1/me",method="GET",'
	. 'status="429"}'), 1, 'the rate-limited one counted as 429');
is(value('payflow_http_requests_total{route="/v1/me",method="GET",'
	. 'status="401"}'), 1, 'the unauthenticated /v1/me counted as 401');
is(value('payflow_http_requests_total{route="/v1/api_keys/{id}",'
	. 'method="GET",status="404"}'), 1, 'an id route under its template');
unlike($m, qr/RAWIDNEVERLABEL/, 'no raw id in any label');
is(value('payflow_http_requests_total{route="unmatched",method="GET",'
	. 'status="404"}'), 1, 'unknown paths counted as "unmatched"');
is(value('payflow_http_requests_total{route="ready",method="GET",'
	. 'status="200"}'), 2, 'readiness probes counted');
is(value('payflow_http_requests_total{route="/v1/api_keys",'
	. 'method="POST",status="413"}'), 1, 'nginx\'s own 413 counted');

is(value('payflow_http_request_duration_seconds_count{route="/v1/me"}'),
	7, 'latency histogram: one observation per /v1/me response');
is(value('payflow_http_request_duration_seconds_bucket{route="/v1/me",'
	. 'le="+Inf"}'), 7, 'latency histogram: +Inf bucket equals the count');

is(value('payflow_auth_total{result="ok",credential="static_key"}'), 7,
	'authentications by credential (not the 429 nor the 413)');
is(value('payflow_auth_total{result="authorization_missing",'
	. 'credential="none"}'), 1, 'refusals by error code');
is(value('payflow_key_cache_total{result="static"}'), 7,
	'key lookups by outcome');

is(value('payflow_pg_pool_connections{state="configured"}'), 3,
	'pool size over all workers');
cmp_ok(value('payflow_pg_queries_total{outcome="ok"}') // 0, '>=', 2,
	'PostgreSQL queries counted');

is(value('payflow_ratelimit_decisions_total{zone="metrics_rl",'
	. 'result="passed"}'), 2, 'rate-limit decisions: passed');
is(value('payflow_ratelimit_decisions_total{zone="metrics_rl",'
	. 'result="rejected"}'), 1, 'rate-limit decisions: rejected');

# the error log line nginx writes about the 413 carries the request id
my $id = $big->{headers}{'x-request-id'} // 'none';
is($big->{status}, 413, 'an oversized body: 413');
like($t->error_log, qr/too large body.*request_id: \Q$id\E/,
	'its error-log line ends with the request id of the response');

ok($t->no_worker_crash, 'no worker crash');

###############################################################################
