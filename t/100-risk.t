#!/usr/bin/perl

# The risk engine: each worker-side rule firing on its own with its reason
# in risk.rules (velocity per customer, e-mail, address, card; amount
# anomalies against the customer and the tenant; a first-seen customer
# paying much; many cards), block and allow lists of every type, self-
# dealing, thresholds and rule scores per tenant, a block that calls no
# provider, a review that calls the provider once when approved and none
# when rejected, the events, tenant isolation, bad input and the metrics.
#
# Every scenario has its own tenant, so that counters never mix; the
# client address comes from X-Forwarded-For through nginx's realip module
# (trusted from 127.0.0.1 only), as an operator behind a proxy sets it.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua->plan(71);

my $secret = 'sk_test_' . join('', map { ('a' .. 'z')[rand 26] } 1 .. 24);

my $conf = <<'EOF';

%%LUA_MODULES%%
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=4 queue=512;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    payflow_kek k1 file=%%TESTDIR%%/kek1;
    payflow_risk zone=risk:1m review=50 block=90 review_expiry=3s;
    payflow_jobs_interval 200ms;
    payflow_risk_rule velocity_customer_1m limit=4 score=30;
    payflow_risk_rule velocity_email_1m limit=4 score=30;
    payflow_risk_rule velocity_ip_1m limit=6 score=35;
    payflow_risk_rule velocity_card_1m limit=4 score=30;
    payflow_risk_rule velocity_ip_1h limit=1000;
    payflow_risk_rule velocity_ip_24h limit=1000;

    payflow_provider stripe type=stripe
                     base_url=http://127.0.0.1:%%PORT_8091%%
                     secret_file=%%TESTDIR%%/stripe.key timeout=2s;

    lua_shared_dict stripe 4m;

    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }

    server {
        listen       127.0.0.1:%%PORT_8091%%;
        set $stripe_secret "STRIPE";
        location / { content_by_lua_file %%EMULATORS%%/stripe.lua; }
    }
}

EOF
$conf =~ s/STRIPE/$secret/;
$t->write_file('stripe.key', "$secret\n");
$t->write_file('kek1', join('', map { sprintf '%02x', int rand 256 } 1 .. 32)
	. "\n");
$t->write_file_expand('nginx.conf', $conf);

$t->run;

my $stripe = $t->port('8091');

sub last_request {
	my $r = http_parse(http_request('GET', '/_emulator/requests',
		port => $stripe));
	return ($r->{json} // [])->[-1] // {};
}

sub requests {
	my $r = http_parse(http_request('GET', '/_emulator/requests',
		port => $stripe));
	return scalar @{$r->{json} // []};
}

# a tenant of its own, with a key that may manage the risk settings
sub tenant {
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'risk' });
	my $id = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$id/api_keys",
		{ mode => 'test', role => 'admin' });
	return ($id, $r->{json}{data}{secret});
}

my $n = 0;

sub pay {
	my ($key, $body, @h) = @_;
	my $ip = $body->{_ip} // '127.1.' . (++$n % 250) . '.' . (1 + $n % 200);
	delete $body->{_ip};
	return bearer($key, 'POST', '/v1/payments',
		{ amount => 1000, currency => 'usd', %$body },
		headers => ["X-Forwarded-For: $ip", @h]);
}

sub payment { my $r = shift; $r->{json}{data} // $r->{json}{error}{payment} }

sub rules {
	my $p = payment(shift) // return '';
	return join ',', map { $_->{rule} } @{$p->{risk}{rules} // []};
}

sub decision { my $p = payment(shift) // return ''; $p->{risk}{decision} }

sub err { my $r = shift; join ' ', $r->{status} // 'none',
	$r->{json}{error}{code} // '-', $r->{json}{error}{param} // '-' }

###############################################################################
# a quiet payment

my ($ta, $ka) = tenant();

my $r = pay($ka, { customer => { email => 'quiet@example.com' } });
is($r->{status}, 200, 'a quiet payment passes');
is_deeply([payment($r)->{status}, payment($r)->{risk}{score},
	decision($r), rules($r)], ['succeeded', 0, 'allow', ''],
	'with its risk: score 0, allow, no rule');

$r = pay($ka, { customer => { id => "q\"uote\\ back/slash",
	email => 'Odd"Name@example.com' }, payment_method => 'pm_"x' });
is_deeply([$r->{status}, decision($r)], [200, 'allow'],
	'signals with quotes and backslashes travel escaped');

###############################################################################
# each rule on its own

my ($tv, $kv) = tenant();
my @r = map { pay($kv, { customer => { id => 'cust-7' } }) } 1 .. 5;
is(rules($r[3]), '', 'four payments of one customer in a minute are fine');
is(rules($r[4]), 'velocity_customer_1m', 'the fifth fires the velocity rule');
like(payment($r[4])->{risk}{rules}[0]{detail}, qr/^5 payments \(limit 4\)$/,
	'with its reason');
is(payment($r[4])->{risk}{score}, 30, 'and the configured score');

my ($tr, $kr) = tenant();
pay($kr, { customer => { id => 'retry' } }, 'Idempotency-Key: r-1') for 1 .. 6;
is(rules(pay($kr, { customer => { id => 'retry' } })), '',
	'retries under one Idempotency-Key are one payment, counted once');

my ($te, $ke) = tenant();
@r = map { pay($ke, { customer => { email => "Same\@Example.com",
	id => "c$_" } }) } 1 .. 5;
is(rules($r[4]), 'velocity_email_1m', 'e-mails are counted in any case');

my ($ti, $ki) = tenant();
@r = map { pay($ki, { _ip => '127.2.0.9' }) } 1 .. 7;
is(rules($r[5]) . '|' . rules($r[6]), '|velocity_ip_1m',
	'the seventh payment from one address fires the address rule');
is(rules(pay($ki, { _ip => '127.2.0.10' })), '',
	'another address is counted apart');

my ($tc, $kc) = tenant();
@r = map { pay($kc, { payment_method => 'pm_card_same',
	customer => { id => "k$_" } }) } 1 .. 5;
is(rules($r[4]), 'velocity_card_1m', 'one card five times fires the card rule');

my ($tn, $kn) = tenant();
pay($kn, { amount => 1000, customer => { id => 'steady' } }) for 1 .. 3;
$r = pay($kn, { amount => 9000, customer => { id => 'steady' } });
is(rules($r), 'amount_customer_anomaly',
	'nine times a customer\'s usual amount fires the anomaly rule');
like(payment($r)->{risk}{rules}[0]{detail}, qr/times the customer's usual/,
	'with its reason');

my ($tz, $kz) = tenant();
pay($kz, { amount => 1000 + int rand 200 }) for 1 .. 31;
$r = pay($kz, { amount => 40000 });
is(rules($r), 'amount_tenant_anomaly',
	'an amount far above the tenant\'s usual ones fires the tenant rule');

my ($tf, $kf) = tenant();
$r = pay($kf, { amount => 60000, customer => { id => 'newcomer' } });
is(rules($r), 'first_seen_large', 'a new customer paying much is noticed');
is(rules(pay($kf, { amount => 60000, customer => { id => 'newcomer' } })), '',
	'a second time it is no longer new');

my ($td, $kd) = tenant();
@r = map { pay($kd, { payment_method => "pm_card_$_",
	customer => { id => 'cardy' } }) } 1 .. 4;
is(rules($r[2]) . '|' . rules($r[3]), '|cards_per_customer',
	'a fourth card for one customer in a day fires the cards rule');

###############################################################################
# lists

my ($tl, $kl) = tenant();
sub list { bearer($kl, @_) }

$r = list('POST', '/v1/risk/lists/email', { value => 'Fraud@Example.com' });
is_deeply([$r->{status}, $r->{json}{data}{value}, $r->{json}{data}{list}],
	[200, 'fraud@example.com', 'block'],
	'an e-mail goes on the block list, in lower case');
is(list('POST', '/v1/risk/lists/email', { value => 'fraud@example.com' })
	->{json}{data}{id}, $r->{json}{data}{id}, 'adding it again is the same');

my $before = requests();
$r = pay($kl, { customer => { email => 'fraud@example.com' } },
	'Idempotency-Key: blocked-1');
is(err($r), '402 payment_blocked -', 'a blocked payment is a 402');
is_deeply([payment($r)->{status}, payment($r)->{failure_code},
	decision($r), rules($r), payment($r)->{risk}{score}],
	['failed', 'blocked', 'block', 'blocklist_email', 100],
	'the payment failed, blocked, by the list');
my $blocked = payment($r)->{id};
my $again = pay($kl, { customer => { email => 'fraud@example.com' } },
	'Idempotency-Key: blocked-1');
is_deeply([$again->{status}, $again->{headers}{'idempotent-replayed'},
	payment($again)->{id}], [402, 'true', $blocked],
	'its key replays the 402');

$r = pay($kl, { provider => 'stripe', payment_method => 'pm_card_visa',
	customer => { email => 'fraud@example.com' } });
is(err($r), '402 payment_blocked -', 'a network provider\'s payment too');
is(requests(), $before, 'and no provider was called');

list('POST', '/v1/risk/lists/email_domain', { value => 'bad.example' });
is(rules(pay($kl, { customer => { email => 'x@BAD.example' } })),
	'blocklist_email_domain', 'a domain on the list blocks');

list('POST', '/v1/risk/lists/ip', { value => '127.9.0.0/16' });
is(rules(pay($kl, { _ip => '127.9.4.5' })), 'blocklist_ip',
	'an address in a listed network blocks');
is(rules(pay($kl, { _ip => '127.10.4.5' })), '', 'one outside does not');

list('POST', '/v1/risk/lists/country', { value => 'kp' });
is(rules(pay($kl, { customer => { country => 'KP' } })),
	'blocklist_country', 'a country blocks');

list('POST', '/v1/risk/lists/customer', { value => 'cust-bad' });
list('POST', '/v1/risk/lists/card', { value => 'pm_card_stolen' });
is(rules(pay($kl, { customer => { id => 'cust-bad' },
	payment_method => 'pm_card_stolen' })),
	'blocklist_card,blocklist_customer', 'a customer and a card block');

list('POST', '/v1/risk/lists/email',
	{ value => 'vip@bad.example', list => 'allow' });
$r = pay($kl, { customer => { email => 'vip@bad.example' } });
is_deeply([$r->{status}, decision($r)], [200, 'allow'],
	'an allow-list entry allows even with a blocked domain');

$r = list('GET', '/v1/risk/lists/email?list=block');
is_deeply([map { $_->{value} } @{$r->{json}{data}{data}}],
	['fraud@example.com'], 'a list reads back, by list');

my ($tb, $kb) = tenant();
is(rules(pay($kb, { customer => { email => 'fraud@example.com' } })), '',
	'another tenant\'s list never applies');
is(scalar @{bearer($kb, 'GET', '/v1/risk/lists/email')->{json}{data}{data}},
	0, 'nor shows');

$r = list('DELETE', '/v1/risk/lists/email?value=FRAUD%40example.com');
is_deeply([$r->{status}, $r->{json}{data}{data}[0]{value}],
	[200, 'fraud@example.com'], 'an entry comes off the list');
is(rules(pay($kl, { customer => { email => 'fraud@example.com' } })), '',
	'and blocks no more');
is(err(list('DELETE', '/v1/risk/lists/email?value=fraud%40example.com')),
	'404 resource_missing value', 'removing it twice is a 404');

###############################################################################
# self-dealing, review, approve and reject

my ($ts, $ks) = tenant();

$r = bearer($ks, 'PATCH', '/v1/risk/rules', { self_dealing => {
	emails => ['Owner@Shop.example'], domains => ['shop.example'] } });
is_deeply($r->{json}{data}{self_dealing},
	{ emails => ['owner@shop.example'], domains => ['shop.example'] },
	'the tenant names its own identities');

$r = pay($ks, { customer => { email => 'owner@shop.example' } },
	'Idempotency-Key: self-1');
is_deeply([$r->{status}, payment($r)->{status}, decision($r), rules($r)],
	[200, 'requires_review', 'review', 'self_dealing'],
	'paying oneself goes to review');
my $review = payment($r)->{id};

is(join(' ', map { (split ' ', err($_))[0] }
	bearer($ks, 'POST', "/v1/payments/$review/capture"),
	bearer($ks, 'POST', "/v1/payments/$review/cancel"),
	bearer($ks, 'POST', '/v1/refunds', { payment => $review })),
	'409 409 409', 'a payment in review is not captured, canceled or refunded');

$r = bearer($ks, 'GET', '/v1/reviews');
is_deeply([map { $_->{id} } @{$r->{json}{data}{data}}], [$review],
	'the review queue holds it');

$r = bearer($ks, 'POST', "/v1/reviews/$review/approve", undef,
	headers => ['Idempotency-Key: approve-1']);
is_deeply([$r->{status}, $r->{json}{data}{status}], [200, 'succeeded'],
	'approved, the sandbox takes it');
$again = bearer($ks, 'POST', "/v1/reviews/$review/approve", undef,
	headers => ['Idempotency-Key: approve-1']);
is_deeply([$again->{status}, $again->{headers}{'idempotent-replayed'}],
	[200, 'true'], 'the approval replays by its key');
is(err(bearer($ks, 'POST', "/v1/reviews/$review/approve")),
	'409 payment_not_in_review id', 'a second approval is refused');

$r = bearer($ks, 'GET', "/v1/payments/$review/events");
is(join(',', map { $_->{type} } @{$r->{json}{data}{data}}),
	'payment.created,payment.review_required,payment.review_approved,'
	. 'payment.succeeded', 'every step is in the log');
is($t->psql("SELECT count(*) FROM ledger_entries WHERE payment_id = "
	. "'$review'"), 2, 'and the capture in the ledger');

is($t->psql("SELECT action || ' ' || target_type || ' ' || actor_type "
	. "FROM audit_logs WHERE target_id = '$review' ORDER BY id"),
	'review.approved payment api_key', 'the approval is audited');
is($t->psql("SELECT count(*) FROM audit_logs WHERE tenant_id = '$tl' "
	. "AND action = 'risk_list.added'"), 7, 'and so are list entries');

$r = pay($ks, { customer => { email => 'someone@shop.example' } });
my $rejected = payment($r)->{id};
$r = bearer($ks, 'POST', "/v1/reviews/$rejected/reject");
is_deeply([$r->{status}, $r->{json}{data}{status},
	$r->{json}{data}{failure_code}], [200, 'canceled', 'review_rejected'],
	'a rejected review is canceled');
is($t->psql("SELECT type FROM payment_events WHERE payment_id = "
	. "'$rejected' ORDER BY created_at DESC LIMIT 1"),
	'payment.review_rejected', 'with its event');

$before = requests();
$r = pay($ks, { provider => 'stripe', payment_method => 'pm_card_visa',
	customer => { email => 'owner@shop.example' } });
my $held = payment($r)->{id};
is_deeply([payment($r)->{status}, requests()], ['requires_review', $before],
	'a network payment in review has called nobody');
$r = bearer($ks, 'POST', "/v1/reviews/$held/approve");
is_deeply([$r->{status}, $r->{json}{data}{status}, requests() - $before],
	[200, 'succeeded', 1], 'approved, its provider is called once');
like(last_request()->{body} // '', qr/receipt_email=owner%40shop\.example/,
	'with the customer\'s e-mail, opened from its sealed row');

$r = pay($ks, { customer => { email => 'late@shop.example' } });
my $late = payment($r)->{id};
ok($t->poll(10, sub { $t->psql("SELECT failure_code FROM payments "
	. "WHERE id = '$late'") eq 'review_expired' }),
	'a review nobody decides expires, canceled');

###############################################################################
# thresholds and scores per tenant

my ($tt, $kt) = tenant();

$r = bearer($kt, 'GET', '/v1/risk/rules');
is_deeply([$r->{json}{data}{review_threshold},
	$r->{json}{data}{block_threshold},
	scalar(grep { $_->{rule} eq 'velocity_customer_1m'
		&& $_->{score} == 30 } @{$r->{json}{data}{rules}})],
	[50, 90, 1], 'the defaults are nginx.conf\'s');

bearer($kt, 'PATCH', '/v1/risk/rules', { block_threshold => 15,
	review_threshold => 10 });
$r = pay($kt, { amount => 60000, customer => { id => 'big' } });
is_deeply([err($r), payment($r)->{failure_code}],
	['402 payment_blocked -', 'blocked'],
	'a tenant\'s own threshold blocks on a score of 20');

$r = bearer($kt, 'PATCH', '/v1/risk/rules',
	{ rules => { first_seen_large => { enabled => JSON::PP::false } } });
is((grep { $_->{rule} eq 'first_seen_large' } @{$r->{json}{data}{rules}})[0]
	{enabled}, JSON::PP::false, 'a rule is turned off for the tenant');
is(decision(pay($kt, { amount => 60000, customer => { id => 'big2' } })),
	'allow', 'and no longer counts');

bearer($kt, 'PATCH', '/v1/risk/rules',
	{ rules => { first_seen_large => { score => 12, enabled => JSON::PP::true } } });
$r = pay($kt, { amount => 60000, customer => { id => 'big3' } });
is_deeply([decision($r), payment($r)->{risk}{score}], ['review', 12],
	'a rule\'s score is the tenant\'s');

$r = bearer($kt, 'DELETE', '/v1/risk/rules');
is($r->{json}{data}{block_threshold}, 90, 'and the defaults come back');

###############################################################################
# bad input

is(err(bearer($kt, 'PATCH', '/v1/risk/rules', { rules => { nope => {} } })),
	'400 rule_unknown rules[nope]', 'an unknown rule is named');
is(err(bearer($kt, 'PATCH', '/v1/risk/rules', { block_threshold => 101 })),
	'400 parameter_invalid block_threshold', 'a threshold above 100');
is(err(bearer($kt, 'PATCH', '/v1/risk/rules',
	{ review_threshold => 95, block_threshold => 80 })),
	'400 parameter_invalid review_threshold', 'thresholds that cross');
is(err(bearer($kt, 'POST', '/v1/risk/lists/ip', { value => '10.0.0.0/99' })),
	'400 parameter_invalid value', 'a bad network');
is(err(bearer($kt, 'POST', '/v1/risk/lists/email', { value => 'nobody' })),
	'400 parameter_invalid value', 'a bad e-mail');
is(err(bearer($kt, 'POST', '/v1/risk/lists/planet', { value => 'mars' })),
	'400 parameter_invalid type', 'an unknown list type');
is(err(pay($kt, { customer => { country => 'GBR' } })),
	'400 parameter_invalid customer[country]', 'a bad country');

###############################################################################
# metrics

$r = http_parse(http_request('GET', '/metrics'));
like($r->{body}, qr/^payflow_risk_decisions_total\{decision="block"\} [1-9]/m,
	'decisions are counted');
like($r->{body}, qr/^payflow_risk_evaluation_seconds_count [1-9]/m,
	'and the rules\' evaluation time');
like($r->{body}, qr/^payflow_risk_review_queue \d+$/m,
	'and the review queue');

$t->stop;
is(scalar $t->crash_lines, 0, 'no worker crashed');

# payments sealed under this test's key keep no details the next tests'
# workers could not open (the test database is shared)
$t->psql("UPDATE payments SET customer = NULL, customer_key = NULL, "
	. "customer_index = NULL WHERE customer_key IS NOT NULL");
