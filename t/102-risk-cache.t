#!/usr/bin/perl

# The risk engine's per-worker copy of a tenant's lists and settings
# (sql/0022, docs/risk.md): a payment decided on the copy gets the risk the
# database would have given it; every signal on a list, of every type, is
# still found (the database decides those); a change to the lists or the
# settings, by the API or straight in SQL, applies to the very next
# payment, before any worker refreshed its copy; the copy is remade after
# the change; a tenant whose lists do not fit the copy is decided by the
# database, its listed payments blocked all the same.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(33);

# list_cache=64k: a copy holds at most 64k / 4 / 8 = 2048 digests
$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=4 queue=512;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    %%ADMIN_KEY%%

    payflow_risk zone=risk:1m list_cache=64k list_refresh=200ms;

    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }
}

EOF

$t->run;

sub tenant {
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'copy' });
	my $id = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$id/api_keys",
		{ mode => 'test', role => 'admin' });
	return ($id, $r->{json}{data}{secret});
}

sub copied {
	my $r = http_parse(http_request('GET', '/metrics'));
	return $r->{body} =~ /^payflow_risk_copy_decisions_total (\d+)$/m
		? $1 : -1;
}

my $n = 0;

# one payment: (its risk, 1 if the worker decided it on its copy)
sub pay {
	my ($key, $body) = @_;
	my $ip = delete $body->{_ip} // '10.200.' . (++$n % 250) . '.7';
	my $before = copied();
	my $r = bearer($key, 'POST', '/v1/payments',
		{ amount => 1000, currency => 'usd', %$body },
		headers => ["X-Forwarded-For: $ip"]);
	my $p = $r->{json}{data} // $r->{json}{error}{payment} // {};
	return ($p->{risk} // {}, copied() - $before, $r->{status});
}

sub decided {
	my ($risk) = @_;
	return join ' ', $risk->{decision} // '-',
		join ',', map { $_->{rule} } @{$risk->{rules} // []};
}

# a payment no rule fires on: a new e-mail each time
sub quiet {
	my ($key) = @_;
	return pay($key, { customer => { email => 'q' . ++$n . '@shop.example' } });
}

# quiet payments until the worker decides on its copy (the first loads it)
sub warm {
	my ($key) = @_;
	return $t->poll(10, sub { (quiet($key))[1] });
}

###############################################################################
# a tenant with 1,000 list entries of every type and its own settings

my ($ta, $ka) = tenant();

$t->psql(<<"SQL");
INSERT INTO risk_lists (tenant_id, livemode, list, type, value, network)
SELECT '$ta', false, 'block', t.type, t.value,
       CASE WHEN t.type = 'ip' THEN t.value::cidr END
  FROM generate_series(1, 160) i,
       LATERAL (VALUES ('email', 'bad' || i || '\@fraud.example'),
                       ('email_domain', 'fraud' || i || '.example'),
                       ('card', 'pm_card_stolen_' || i),
                       ('customer', 'cust-bad-' || i),
                       ('ip', '198.18.' || i || '.0/24'),
                       ('ip', '198.19.0.' || i || '/32')) t(type, value);
INSERT INTO risk_lists (tenant_id, livemode, list, type, value, network)
VALUES ('$ta', false, 'block', 'country', 'KP', NULL),
       ('$ta', false, 'block', 'ip', '2001:db8:77::/48', '2001:db8:77::/48');
SQL
is($t->psql("SELECT count(*) FROM risk_lists WHERE tenant_id = '$ta'"),
	962, 'the lists are written');

my $r = bearer($ka, 'PATCH', '/v1/risk/rules', {
	review_threshold => 15, block_threshold => 40,
	self_dealing => { emails => ['owner@merchant.example'] },
	rules => { first_seen_large => { score => 16 },
		amount_customer_anomaly => { enabled => JSON::PP::false } } });
is_deeply([$r->{status}, $r->{json}{data}{review_threshold}], [200, 15],
	'the tenant has its own settings');

ok(warm($ka), 'the worker decides on its copy, once made');

my ($risk, $copy) = quiet($ka);
is_deeply([decided($risk), $copy], ['allow ', 1],
	'a quiet payment: allowed, on the copy');

($risk, $copy) = pay($ka, { amount => 60000,
	customer => { email => 'first@shop.example' } });
is_deeply([decided($risk), $risk->{score}, $copy],
	['review first_seen_large', 16, 1],
	'the tenant\'s score and review threshold, on the copy');
my $on_copy = $risk;

###############################################################################
# every type of entry is found

my @listed = (
	[{ customer => { email => 'bad17@fraud.example' } }, 'blocklist_email'],
	[{ customer => { email => 'BAD18@Fraud.Example' } }, 'blocklist_email'],
	[{ customer => { email => 'x@fraud99.example' } },
		'blocklist_email_domain'],
	[{ payment_method => 'pm_card_stolen_160' }, 'blocklist_card'],
	[{ customer => { id => 'cust-bad-1' } }, 'blocklist_customer'],
	[{ customer => { country => 'KP' } }, 'blocklist_country'],
	[{ _ip => '198.18.42.200' }, 'blocklist_ip'],
	[{ _ip => '198.19.0.77' }, 'blocklist_ip'],
	[{ _ip => '2001:db8:77:1::5' }, 'blocklist_ip'],
	[{ customer => { email => 'owner@merchant.example' } }, 'self_dealing'],
);

for my $case (@listed) {
	my ($body, $rule) = @$case;
	my $what = join ' ', %{$body->{customer} // {}},
		map { $_ // () } $body->{payment_method}, $body->{_ip};
	($risk, $copy) = pay($ka, $body);
	is_deeply([(grep { $_->{rule} eq $rule } @{$risk->{rules} // []})
		? $rule : decided($risk), $copy], [$rule, 0],
		"$what: $rule, decided by the database");
}

($risk, $copy) = pay($ka, { _ip => '198.19.1.77' });
is_deeply([decided($risk), $copy], ['allow ', 1],
	'an address beside the listed ones: allowed on the copy');

###############################################################################
# changes apply to the next payment

# the worker's copy is current: now a change straight in SQL
$t->psql("INSERT INTO risk_lists (tenant_id, livemode, list, type, value) "
	. "VALUES ('$ta', false, 'block', 'email', 'late\@shop.example')");
($risk, $copy) = pay($ka, { customer => { email => 'late@shop.example' } });
is(decided($risk), 'block blocklist_email',
	'an entry written in SQL blocks the next payment');

# the same payment as on the copy, decided by the database while the copy
# is behind (an update moves the version; the worker's refresh may win the
# race to the payment: then again)
for my $try (1 .. 5) {
	$t->psql("UPDATE risk_settings SET updated_at = now() "
		. "WHERE tenant_id = '$ta'");
	($risk, $copy) = pay($ka, { amount => 60000,
		customer => { email => "first-$try\@shop.example" } });
	last if $copy == 0;
}
is_deeply([$risk, $copy], [$on_copy, 0],
	'the database decides as the copy did, while the copy is behind');

ok($t->poll(5, sub { (quiet($ka))[1] }),
	'the copy is made again after the change');

$t->psql("DELETE FROM risk_lists WHERE tenant_id = '$ta' "
	. "AND value = 'late\@shop.example'");
($risk) = pay($ka, { customer => { email => 'late@shop.example' } });
is(decided($risk), 'allow ', 'and an entry removed blocks no more');

ok(warm($ka), 'on the copy again');
bearer($ka, 'PATCH', '/v1/risk/rules', { block_threshold => 15 });
($risk, $copy) = pay($ka, { amount => 60000,
	customer => { email => 'first3@shop.example' } });
is(decided($risk), 'block first_seen_large',
	'a threshold changed by the API applies to the next payment');

ok(warm($ka), 'on the copy again');
($risk, $copy) = pay($ka, { amount => 60000,
	customer => { email => 'first4@shop.example' } });
is_deeply([decided($risk), $copy], ['block first_seen_large', 1],
	'and the copy has it');

bearer($ka, 'POST', '/v1/risk/lists/email',
	{ value => 'vip@fraud7.example', list => 'allow' });
bearer($ka, 'POST', '/v1/risk/lists/email_domain',
	{ value => 'fraud7.example' });
ok(warm($ka), 'on the copy again');
($risk, $copy) = pay($ka, { customer => { email => 'vip@fraud7.example' } });
is_deeply([$risk->{decision}, $copy], ['allow', 0],
	'an allow-list entry: the database allows');

###############################################################################
# a blocked payment whose worker died before answering: the completer
# answers its key as the worker would have, 402

my $fp = 'ab' x 32;
$t->psql(<<"SQL");
SELECT set_config('payflow.tenant_id', '$ta', false),
       set_config('payflow.livemode', 'off', false);
SELECT decision FROM payflow_payment_create('pay_stuckblocked000000000000',
    1000, 'USD', 'automatic', 'sandbox', NULL,
    '{"email": "bad1\@fraud.example"}', NULL, NULL, NULL, NULL,
    'processing', NULL, NULL, NULL, NULL, 'stuck-blocked', '$fp', NULL,
    NULL, NULL,
    '{"rules": [], "signals": {"email": "bad1\@fraud.example"}}');
UPDATE idempotency_keys SET locked_until = now() - interval '1 second'
 WHERE key = 'stuck-blocked';
SELECT payflow_complete_idempotency_keys(10, '$ta', false, 'stuck-blocked');
SQL
my ($status, $body) = split /\|/, $t->psql("SELECT response_status, "
	. "response_body FROM idempotency_keys WHERE key = 'stuck-blocked'"), 2;
my $answer = eval { JSON::PP::decode_json($body // '') } // {};
is_deeply([$status, $answer->{error}{code}, $answer->{error}{payment}{id},
	$answer->{error}{payment}{failure_code}],
	[402, 'payment_blocked', 'pay_stuckblocked000000000000', 'blocked'],
	'a blocked payment\'s stuck key is finished with its 402');

###############################################################################
# lists too large for the copy

my ($tb, $kb) = tenant();
$t->psql(<<"SQL");
INSERT INTO risk_lists (tenant_id, livemode, list, type, value)
SELECT '$tb', false, 'block', 'email', 'many' || i || '\@fraud.example'
  FROM generate_series(1, 3000) i
SQL

quiet($kb);
sleep 1;
my $used = 0;
$used += (quiet($kb))[1] for 1 .. 5;
is($used, 0, '3,000 entries do not fit 64k: the database decides');
is(decided((pay($kb, { customer => { email => 'many2999@fraud.example' } }))[0]),
	'block blocklist_email', 'and blocks the listed');

my ($tc, $kc) = tenant();
ok(warm($kc), 'a tenant without lists has its copy beside it');
is(decided((pay($kc, { customer => { email => 'bad17@fraud.example' } }))[0]),
	'allow ', 'and another tenant\'s lists are not in it');

###############################################################################

$t->stop;
is(scalar $t->crash_lines, 0, 'no worker crashed');
is(scalar(() = $t->error_log =~ /\[(error|crit|alert|emerg)\]/g), 0,
	'nothing at error level');
