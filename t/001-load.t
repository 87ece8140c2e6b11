#!/usr/bin/perl

# The module loads into stock nginx with load_module, and payflow_db
# rejects bad configuration at "nginx -t" time with a message that names
# the directive and the bad value, so an operator can fix it before a
# reload is attempted.
#
# No PostgreSQL is needed: "nginx -t" must not depend on the database, so
# the conninfo points at a port where nothing listens.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->plan(28);

my $dir = $t->testdir;
$t->write_file('pgpass', "secret\n");

my $db = qq{"host=127.0.0.1 port=1 dbname=payflow user=payflow_app"};

# One configuration, with $http placed in http{} before the server and
# $main at the top level.
sub conf {
	my (%c) = @_;
	my $http = defined $c{http} ? $c{http} : '';
	my $main = defined $c{main} ? $c{main} : '';

	return <<"EOF";
%%TEST_GLOBALS%%
$main

events {
}

http {
    %%TEST_GLOBALS_HTTP%%
    payflow_key_pepper file=%%PEPPER_FILE%%;
    $http

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location = /healthz { payflow_health; }
        location = /readyz  { payflow_ready; }
        location /v1        { payflow_api; }
    }
}
EOF
}

# writes the configuration, runs nginx -t, returns (exit code, output)
sub check {
	my ($name, %c) = @_;
	$t->write_file_expand("$name.conf", conf(%c));
	return $t->test_config("$name.conf");
}

###############################################################################
# a complete, valid configuration

my ($rc, $out) = check('good', http => "payflow_db $db pool=4 queue=64 "
	. "queue_timeout=2s query_timeout=5s connect_timeout=3s "
	. "password_file=$dir/pgpass;");
is($rc, 0, 'valid configuration: nginx -t succeeds') or diag($out);
like($out, qr/test is successful/, 'valid configuration: test is successful');

($rc, $out) = check('minimal', http => "payflow_db $db;");
is($rc, 0, 'payflow_db with conninfo only: nginx -t succeeds')
	or diag($out);

###############################################################################
# invalid payflow_db variants: nginx -t fails and names the bad value

# a conninfo keyword libpq does not know
($rc, $out) = check('badkey',
	http => q{payflow_db "host=127.0.0.1 nosuchkey=1";});
isnt($rc, 0, 'unknown conninfo keyword: nginx -t fails');
like($out, qr/payflow_db/, 'unknown conninfo keyword: names payflow_db');
like($out, qr/nosuchkey/, 'unknown conninfo keyword: names the keyword');

# a pool of zero connections could never serve a query
($rc, $out) = check('pool0', http => "payflow_db $db pool=0;");
isnt($rc, 0, 'pool=0: nginx -t fails');
like($out, qr/payflow_db/, 'pool=0: names payflow_db');
like($out, qr/pool=0|"0"/, 'pool=0: names the value');

($rc, $out) = check('poolabc', http => "payflow_db $db pool=abc;");
isnt($rc, 0, 'pool=abc: nginx -t fails');
like($out, qr/payflow_db/, 'pool=abc: names payflow_db');
like($out, qr/abc/, 'pool=abc: names the value');

($rc, $out) = check('unknown', http => "payflow_db $db frobnicate=1;");
isnt($rc, 0, 'unknown parameter: nginx -t fails');
like($out, qr/payflow_db/, 'unknown parameter: names payflow_db');
like($out, qr/frobnicate/, 'unknown parameter: names the parameter');

($rc, $out) = check('badtime', http => "payflow_db $db query_timeout=soon;");
isnt($rc, 0, 'query_timeout=soon: nginx -t fails');
like($out, qr/soon/, 'query_timeout=soon: names the value');

for my $gw ('off', '0', '5ms') {
	($rc, $out) = check("gw$gw", http => "payflow_db $db group_wait=$gw;");
	is($rc, 0, "group_wait=$gw: nginx -t succeeds") or diag($out);
}

($rc, $out) = check('gwlong', http => "payflow_db $db group_wait=1s;");
isnt($rc, 0, 'group_wait=1s: nginx -t fails');
like($out, qr/group_wait=1s/, 'group_wait=1s: names the value');

# a missing password file is found at config time, not at first query
($rc, $out) = check('nopass',
	http => "payflow_db $db password_file=$dir/no-such-pgpass;");
isnt($rc, 0, 'missing password_file: nginx -t fails');
like($out, qr/payflow_db/, 'missing password_file: names payflow_db');
like($out, qr/no-such-pgpass/, 'missing password_file: names the path');

# payflow_db belongs in http{}, not at the top level
($rc, $out) = check('outside', main => "payflow_db $db;");
isnt($rc, 0, 'payflow_db outside http: nginx -t fails');
like($out, qr/"payflow_db" directive is not allowed here/,
	'payflow_db outside http: not allowed here');
like($out, qr/test failed/, 'payflow_db outside http: nginx -t says failed');

###############################################################################
