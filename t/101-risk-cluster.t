#!/usr/bin/perl

# The risk engine across nodes: two nginx instances sharing one PostgreSQL
# and one Redis count a customer's payments together (the velocity rule
# fires on the payment that is fifth over both, not on each node's fifth).
# With Redis frozen (slower than redis_timeout) or stopped, each node
# counts alone, at once: never an error, never a wait, logged; when Redis
# is back the count is the cluster's again.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t1 = PayFlow::Test->new->has_module->has_pg
	->skip_unless_env('PAYFLOW_REDIS_PORT')->plan(13);
my $t2 = PayFlow::Test->new->has_module->has_pg;

my $conf = <<'EOF';

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=2 queue=128;
    payflow_key_pepper file=PEPPER;
    ADMIN;

    payflow_risk zone=risk:1m redis=127.0.0.1:%%REDIS_PORT%%
                 redis_timeout=50ms;
    payflow_risk_rule velocity_customer_1m limit=4 score=30;
    payflow_risk_rule velocity_ip_1m off;
    payflow_risk_rule velocity_ip_1h off;
    payflow_risk_rule velocity_ip_24h off;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }
}

EOF

# one pepper and one operator credential for both: keys work on either
my $pepper = $t1->pepper_file;
my $admin = 'payflow_admin_key ' . $t1->admin_hash;
$conf =~ s/PEPPER/$pepper/;
$conf =~ s/ADMIN/$admin/;

$t1->write_file_expand('nginx.conf', $conf);
$t2->write_file_expand('nginx.conf', $conf);
$t1->run;
$t2->run;

my $r = $t1->admin_api('POST', '/v1/admin/tenants', { name => 'cluster' });
my $tenant = $r->{json}{data}{id};
$r = $t1->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ mode => 'test', role => 'developer' });
my $key = $r->{json}{data}{secret};

sub pay {
	my ($t, $customer) = @_;
	my $start = time;
	my $r = bearer($key, 'POST', '/v1/payments',
		{ amount => 1000, currency => 'usd',
		  customer => { id => $customer } },
		port => $t->port(8080), timeout => 5);
	$r->{elapsed} = time - $start;
	return $r;
}

sub rules {
	my $p = shift->{json}{data} // return 'none';
	return join(',', map { $_->{rule} } @{$p->{risk}{rules} // []}) || '-';
}

# payments of one customer alternating between the nodes: the rules of each
sub alternate {
	my ($customer, $n) = @_;
	return [map { rules(pay($_ % 2 ? $t1 : $t2, $customer)) } 1 .. $n];
}

sub metric {
	my ($t, $name) = @_;
	my $m = http_parse(http_request('GET', '/metrics',
		port => $t->port(8080)))->{body} // '';
	return $m =~ /^\Q$name\E (\d+)/m ? $1 : undef;
}

# both nodes connect to Redis after they start
ok($t1->poll(10, sub {
	my $c = 'probe-' . time;
	pay($t1, $c);
	return rules(pay($t2, $c)) ne 'none'
		&& (metric($t2, 'payflow_risk_redis_fallbacks_total') // 1) == 0;
}), 'both nodes count in Redis');

###############################################################################
# two nodes, one count

is_deeply(alternate('shared', 5), ['-', '-', '-', '-', 'velocity_customer_1m'],
	'the fifth payment over two nodes fires the rule');

is_deeply(alternate('shared', 1), ['velocity_customer_1m'],
	'and every one after it, whichever node takes it');

###############################################################################
# Redis frozen: slower than the timeout, each node counts alone at once

ok($t1->redis_ctl('STOP'), 'Redis frozen');

my @r = map { pay($_ % 2 ? $t1 : $t2, 'frozen') } 1 .. 6;
is_deeply([map { $_->{status} } @r], [(200) x 6],
	'payments go on, none refused');
is_deeply([map { rules($_) } @r], [('-') x 6],
	'counted by each node alone: three each, under the limit');
ok(!grep({ $_->{elapsed} > 1 } @r), 'none waited more than a moment');

ok($t1->redis_ctl('CONT'), 'Redis thawed');

###############################################################################
# Redis stopped

ok($t1->redis_ctl('stop'), 'Redis stopped');

@r = map { pay($t1, 'down') } 1 .. 5;
is_deeply([map { $_->{status} . ' ' . rules($_) } @r],
	['200 -', '200 -', '200 -', '200 -', '200 velocity_customer_1m'],
	'one node alone still counts, from its own memory');

like($t1->read_file('error.log'),
	qr/payflow risk: Redis .*, velocity counted by this node alone/,
	'and says so in the error log');

ok($t1->redis_ctl('start'), 'Redis started again');

ok($t1->poll(15, sub {
	my $c = 'back-' . time;
	pay($t1, $c) for 1 .. 2;
	pay($t2, $c) for 1 .. 2;
	return rules(pay($t1, $c)) eq 'velocity_customer_1m';
}), 'once Redis is back the count is the cluster\'s again');

$t1->stop;
$t2->stop;
