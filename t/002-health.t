#!/usr/bin/perl

# Health, readiness and the JSON envelope: /healthz answers without the
# database, /readyz makes a real PostgreSQL round trip and reports the
# schema version, every response carries X-Request-Id (a sane client one is
# echoed, anything else replaced), unknown API paths and oversized bodies
# get the same JSON error envelope as the module's own errors.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(48);

# a static key, so that /v1 requests get past authentication
my ($key, $key_hash) = $t->pf_key('test', '--tenant', 'ten_health',
	'--role', 'viewer');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    payflow_static_key $key_hash tenant=ten_health mode=test role=viewer;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        client_max_body_size 1k;

        location = /healthz { payflow_health; }
        location = /readyz  { payflow_ready; }
        location /v1        { payflow_api; }
    }
}

EOF

$t->run;

my $RID = qr/^req_[0-9A-Za-z]{24}$/;
my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z$/;

sub get { http_parse(http_get(@_)) }

###############################################################################
# /healthz: liveness, no database involved

my $r = get('/healthz');
is($r->{status}, 200, 'healthz: 200');
like($r->{headers}{'content-type'}, qr{^application/json\b},
	'healthz: application/json');
ok($r->{json}, 'healthz: body is JSON') or diag($r->{body});
is($r->{json}{success}, JSON::PP::true, 'healthz: success true');
is($r->{json}{data}{status}, 'ok', 'healthz: data.status ok');
like($r->{headers}{'x-request-id'} // '', $RID,
	'healthz: generated X-Request-Id is req_ + 24 base62');
is($r->{json}{meta}{request_id}, $r->{headers}{'x-request-id'},
	'healthz: meta.request_id equals the header');
like($r->{json}{meta}{timestamp} // '', $TS,
	'healthz: meta.timestamp is ISO 8601 UTC');

my $r2 = get('/healthz');
isnt($r2->{headers}{'x-request-id'}, $r->{headers}{'x-request-id'},
	'healthz: a new request id per request');

###############################################################################
# /readyz: a real round trip, the version must be what the database says

my $version = $t->psql('SELECT max(version) FROM schema_migrations');
ok(length $version, "schema version in the database: '$version'");

$r = get('/readyz');
is($r->{status}, 200, 'readyz: 200') or diag($r->{raw});
like($r->{headers}{'content-type'}, qr{^application/json\b},
	'readyz: application/json');
is($r->{json}{success}, JSON::PP::true, 'readyz: success true');
is($r->{json}{data}{status}, 'ready', 'readyz: data.status ready');

my $pg = $r->{json}{data}{checks}{postgres} || {};
is($pg->{status}, 'ok', 'readyz: checks.postgres.status ok');
is($pg->{schema_version}, $version,
	'readyz: schema_version is the database\'s max(version)');
like($r->{body}, qr/"schema_version"\s*:\s*"/,
	'readyz: schema_version is a JSON string');
like($r->{body}, qr/"latency_ms"\s*:\s*\d+\s*[,}]/,
	'readyz: latency_ms is a JSON integer');
like($r->{headers}{'x-request-id'} // '', $RID, 'readyz: X-Request-Id');
is($r->{json}{meta}{request_id}, $r->{headers}{'x-request-id'},
	'readyz: meta.request_id equals the header');
like($r->{json}{meta}{timestamp} // '', $TS, 'readyz: meta.timestamp');

###############################################################################
# X-Request-Id from the client: echoed when sane, replaced otherwise

sub with_id {
	my ($id) = @_;
	return get('/healthz', headers => ["X-Request-Id: $id"]);
}

my $sane = 'client-1.2_3:ABC';
$r = with_id($sane);
is($r->{headers}{'x-request-id'}, $sane, 'sane client id echoed in header');
is($r->{json}{meta}{request_id}, $sane, 'sane client id in meta.request_id');

my $long = 'a' x 128;
$r = with_id($long);
is($r->{headers}{'x-request-id'}, $long, '128-character id echoed');

$r = with_id('a' x 129);
like($r->{headers}{'x-request-id'}, $RID, '129-character id replaced');

$r = with_id('has space');
like($r->{headers}{'x-request-id'}, $RID, 'id with a space replaced');
is($r->{json}{meta}{request_id}, $r->{headers}{'x-request-id'},
	'replaced id: meta.request_id equals the header');

$r = with_id('<script>alert(1)</script>');
like($r->{headers}{'x-request-id'}, $RID, 'id with markup replaced');

$r = with_id('abc"def');
like($r->{headers}{'x-request-id'}, $RID, 'id with a quote replaced');

###############################################################################
# /v1: unknown path is a 404 in the JSON envelope

$r = get('/v1/nope');
is($r->{status}, 401, 'unknown /v1 path without credentials: 401 first');
is($r->{json}{error}{type}, 'authentication_error',
	'401: error.type authentication_error');

$r = http_parse(http_request('GET', '/v1/nope',
	headers => { Authorization => "Bearer $key" }));
is($r->{status}, 404, 'unknown /v1 path: 404');
like($r->{headers}{'content-type'}, qr{^application/json\b},
	'404: application/json');
is($r->{json}{success}, JSON::PP::false, '404: success false');
is($r->{json}{error}{type}, 'invalid_request_error',
	'404: error.type invalid_request_error');
is($r->{json}{error}{code}, 'resource_not_found',
	'404: error.code resource_not_found');
ok(length($r->{json}{error}{message} // ''), '404: error.message present');
like($r->{headers}{'x-request-id'} // '', $RID, '404: X-Request-Id');
is($r->{json}{meta}{request_id}, $r->{headers}{'x-request-id'},
	'404: meta.request_id equals the header');

###############################################################################
# a body over client_max_body_size: nginx's own 413, in the JSON envelope

$r = http_parse(http_request('POST', '/v1/x',
	headers => ['Content-Type: application/json',
		'X-Request-Id: big-body-1'],
	body => '{"pad":"' . ('x' x 2048) . '"}'));
is($r->{status}, 413, 'body over 1k: 413');
like($r->{headers}{'content-type'} // '', qr{^application/json\b},
	'413: application/json');
is($r->{json}{success}, JSON::PP::false, '413: success false')
	or diag($r->{raw});
is($r->{json}{error}{code}, 'request_too_large',
	'413: error.code request_too_large');
is($r->{headers}{'x-request-id'}, 'big-body-1',
	'413: client X-Request-Id echoed');
is($r->{json}{meta}{request_id}, 'big-body-1',
	'413: meta.request_id equals the header');

# same without a client id: one is generated for the nginx error too
$r = http_parse(http_request('POST', '/v1/x', body => 'y' x 2048));
like($r->{headers}{'x-request-id'} // '', $RID,
	'413: generated X-Request-Id');

###############################################################################

ok($t->no_worker_crash, 'no worker crash');

$t->stop;
is(scalar($t->alert_lines), 0, 'no [alert]/[crit]/[emerg] in error.log')
	or diag(join "\n", $t->alert_lines);

###############################################################################
