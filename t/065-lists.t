#!/usr/bin/perl

# The read side: GET /v1/payments with its cursors and filters (status,
# created range, customer), GET /v1/refunds?payment=, GET /v1/ledger/entries
# and GET /v1/balance; every bad parameter named; each tenant sees only its
# own rows, whatever cursor it sends.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(34);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=2;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

$t->run;

sub tenant_key {
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => shift });
	my $tenant = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
		{ role => 'developer' });
	return $r->{json}{data}{secret};
}

my $key = tenant_key('lists');
my $other = tenant_key('other');

sub call { bearer($key, @_) }
sub ids { join ' ', map { $_->{id} } @{$_[0]->{json}{data}{data} || []} }
sub err { my $r = shift; ($r->{status} // 'none') . ' '
	. ($r->{json}{error}{code} // '-') . ' '
	. ($r->{json}{error}{param} // '-') }

my $t0 = time;

# 12 payments, newest last: every third to ann@, amount ..02 declines
my @p;
for my $i (0 .. 11) {
	my %body = (amount => 1000 + $i * 100 + ($i == 4 ? 2 : 0),
		currency => $i % 4 == 3 ? 'eur' : 'usd');
	$body{customer} = { email => 'Ann@Example.com', name => 'Ann' }
		if $i % 3 == 0;
	$body{capture_method} = 'manual' if $i == 7;
	my $r = call('POST', '/v1/payments', \%body);
	push @p, $r->{json}{data} // $r->{json}{error}{payment};
}
my @newest = reverse map { $_->{id} } @p;

###############################################################################
# payments: pages and cursors

my $r = call('GET', '/v1/payments');
is(ids($r), "@newest[0 .. 9]", 'newest first, 10 by default');
is($r->{json}{data}{object} . ' ' . ($r->{json}{data}{has_more} ? 1 : 0),
	'list 1', 'a list, with more');

my (@walked, $after);
for (1 .. 10) {
	$r = call('GET', '/v1/payments?limit=5'
		. ($after ? "&starting_after=$after" : ''));
	push @walked, @{$r->{json}{data}{data}};
	last unless $r->{json}{data}{has_more};
	$after = $walked[-1]{id};
}
is(join(' ', map { $_->{id} } @walked), "@newest",
	'starting_after walks every payment once');

$r = call('GET', "/v1/payments?limit=3&ending_before=$newest[6]");
is(ids($r), "@newest[3 .. 5]", 'ending_before: the page before, newest first');
ok($r->{json}{data}{has_more}, 'with more before it');
is(ids(call('GET', "/v1/payments?ending_before=$newest[0]")), '',
	'nothing before the newest');

###############################################################################
# payments: filters

is(ids(call('GET', '/v1/payments?status=failed')), $p[4]{id},
	'status=failed');
is(ids(call('GET', '/v1/payments?status=requires_capture')), $p[7]{id},
	'status=requires_capture');
is(ids(call('GET', '/v1/payments?customer=ann%40example.COM')),
	"$newest[2] $newest[5] $newest[8] $newest[11]",
	'customer: by e-mail, any case, escaped or not');
is(ids(call('GET', '/v1/payments?customer=ann@example.com&status=failed')),
	'', 'filters combine');

is(scalar(@{call('GET', "/v1/payments?limit=100&created[gte]=$t0")
	->{json}{data}{data}}), 12, 'created[gte]: from a time on');
is(ids(call('GET', '/v1/payments?created%5Bgte%5D=' . (time + 60))), '',
	'created[gte] in the future (brackets escaped): none');
is(ids(call('GET', '/v1/payments?created[lt]=' . ($t0 - 1))), '',
	'created[lt] before they were made: none');
is(scalar(@{call('GET', '/v1/payments?limit=100&created[lte]=' . (time + 1)
	. "&created[gt]=" . ($t0 - 1))->{json}{data}{data}}), 12,
	'a closed range');

###############################################################################
# bad parameters are named

is(err(call('GET', '/v1/payments?limit=0')), '400 parameter_invalid limit',
	'limit=0');
is(err(call('GET', '/v1/payments?limit=101')), '400 parameter_invalid limit',
	'limit=101');
is(err(call('GET', '/v1/payments?status=paid')),
	'400 parameter_invalid status', 'an unknown status');
is(err(call('GET', '/v1/payments?created[gte]=yesterday')),
	'400 parameter_invalid created[gte]', 'a time that is not a number');
is(err(call('GET', '/v1/payments?created[gte]=1&created[gt]=2')),
	'400 parameter_invalid created[gt]', 'one end given twice');
is(err(call('GET', '/v1/payments?customer=nobody')),
	'400 parameter_invalid customer', 'a customer that is not an address');
is(err(call('GET', "/v1/payments?starting_after=$p[0]{id}"
	. "&ending_before=$p[1]{id}")), '400 parameter_invalid ending_before',
	'both cursors');
is(err(call('GET', '/v1/payments?starting_after=pay%27%3B--')),
	'400 parameter_invalid starting_after', 'a cursor that is not an id');

###############################################################################
# tenants

is(ids(bearer($other, 'GET', '/v1/payments')), '',
	'another tenant sees none of them');
is(ids(bearer($other, 'GET', "/v1/payments?ending_before=$newest[11]")), '',
	'not even through a cursor');

###############################################################################
# refunds

my $paid = $p[1]{id};
my @re = map { call('POST', '/v1/refunds',
	{ payment => $paid, amount => 100 })->{json}{data}{id} } 1 .. 3;
call('POST', '/v1/refunds', { payment => $p[2]{id}, amount => 50 });

is(ids(call('GET', "/v1/refunds?payment=$paid")), "$re[2] $re[1] $re[0]",
	'a payment\'s refunds, newest first');
is(scalar(@{call('GET', '/v1/refunds')->{json}{data}{data}}), 4,
	'all refunds');
is(err(call('GET', '/v1/refunds?payment=re_1')),
	'400 parameter_invalid payment', 'payment must be a payment id');
is(ids(bearer($other, 'GET', "/v1/refunds?payment=$paid")), '',
	'another tenant sees no refund');

###############################################################################
# ledger and balance

$r = call('GET', "/v1/ledger/entries?payment=$paid&limit=100");
my @e = @{$r->{json}{data}{data}};
# newest first, in the order they were sealed; the two of one transaction
# in either order
is(join(' ', sort { $b cmp $a }
	map { "$_->{direction}:$_->{account}:$_->{amount}" } @e[-2, -1]),
	"debit:provider:sandbox:clearing:1100 credit:merchant:payable:1100",
	'the capture is a debit and a credit');
is(scalar(@e), 8, 'and each of 3 refunds is two more');

my %want;
for my $q (@p) {
	next unless $q->{status} eq 'succeeded';
	$want{$q->{currency}} += $q->{amount};
}
$want{usd} -= 350;

$r = call('GET', '/v1/balance');
is(join(' ', map { "$_->{currency}:$_->{amount}" }
	@{$r->{json}{data}{available}}),
	join(' ', map { "$_:$want{$_}" } sort keys %want),
	'balance: captured less refunded, per currency');
is(join(' ', map { "$_->{currency}:" . ($_->{credits} - $_->{debits}) }
	grep { $_->{account} =~ /clearing/ } @{$r->{json}{data}{accounts}}),
	join(' ', map { "$_:-$want{$_}" } sort keys %want),
	'which the provider\'s clearing account mirrors');
is(scalar(@{bearer($other, 'GET', '/v1/balance')
	->{json}{data}{available}}), 0, 'another tenant\'s balance is its own');

$t->stop;
is($t->alert_lines, 0, 'no alerts');

###############################################################################
