#!/usr/bin/perl

# Customer details sealed at rest (sql/0024, docs/accounts.md): a
# payment's e-mail, name and phone are sealed by the worker under the
# payment's own key; the row, its events and its stored answer hold only
# ciphertext (a pg_dump has none of them in the clear), while every answer,
# list, event and webhook shows them; GET /v1/payments?customer= finds them
# by blind index, within the tenant; a ciphertext moved to another row
# fails that answer alone; details written in the clear are sealed in the
# background; a new KEK wraps every key again under load; erasure destroys
# the keys and the copies, leaves the ledger verifiable; bad input and bad
# configuration are refused with the parameter or directive named.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->has_lua;

$t->plan(52);

my @hex = map { join '', map { sprintf '%02x', int rand 256 } 1 .. 32 }
	1 .. 2;
$t->write_file('kek1', "$hex[0]\n");
$t->write_file('kek2', "$hex[1]\n");

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

    KEKS

    payflow_outbox_allow_private on;
    payflow_outbox_interval 200ms;
    payflow_outbox_timeout 1s;
    payflow_outbox_retries 1s 1s 1s;

    lua_shared_dict receiver 16m;

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location = /metrics { payflow_metrics; }
        location /          { payflow_api; }
    }

    server {
        listen       127.0.0.1:%%PORT_8094%%;
        location / { content_by_lua_file %%EMULATORS%%/receiver.lua; }
    }
}

EOF

sub conf {
	my ($keks) = @_;
	(my $c = $conf) =~ s/KEKS/$keks/;
	$t->write_file_expand('nginx.conf', $c);
}

conf('payflow_kek k1 file=%%TESTDIR%%/kek1;');
$t->run;

my $rport = $t->port('8094');

sub received {
	my ($path) = @_;
	my $r = http_parse(http_get('/_receiver/requests', port => $rport));
	return grep { $_->{uri} eq $path } @{$r->{json} // []};
}

sub metric {
	my ($name) = @_;
	my $r = http_parse(http_request('GET', '/metrics'));
	return $r->{body} =~ /^\Q$name\E (\d+)$/m ? $1 : -1;
}

sub tenant_key {
	my ($name) = @_;
	my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => $name });
	my $tenant = $r->{json}{data}{id};
	$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
		{ mode => 'test', role => 'admin' });
	return ($tenant, $r->{json}{data}{secret});
}

my ($tenant, $key) = tenant_key('pii');
my ($other, $okey) = tenant_key('pii other');

my $tag = join '', map { ('a' .. 'z')[rand 26] } 1 .. 10;
my $email = "ada.$tag\@example.org";
my $name = "Ada Lovelace $tag";
my $phone = '+4420' . int(rand 1e7);

sub pay {
	my ($k, $customer, %h) = @_;
	return bearer($k // $key, 'POST', '/v1/payments',
		{ amount => 2000, currency => 'usd', customer => $customer },
		%h);
}

my $cust = { email => $email, name => $name, phone => $phone,
	id => "cus_$tag", country => 'GB' };

my $r = bearer($key, "POST", "/v1/webhook_endpoints",
	{ url => "http://127.0.0.1:$rport/hook/pii",
	  events => ['payment.succeeded'] });
my $endpoint = $r->{json}{data}{id};

###############################################################################
# sealed at creation, shown everywhere

$r = pay($key, $cust, headers => ["Idempotency-Key: pii-$tag"]);
is($r->{status}, 200, 'a payment with a customer');
my $p1 = $r->{json}{data};
is_deeply($p1->{customer}, $cust, 'its answer shows the customer as given');

my $row = $t->psql("SELECT customer::text || ' ' || customer_key || ' ' "
	. "|| encode(customer_index, 'hex') FROM payments "
	. "WHERE id = '$p1->{id}'");
like($row, qr/"pii": "[A-Za-z0-9_-]+"/, 'the row holds a ciphertext');
like($row, qr/ pf1\.k1\.[A-Za-z0-9_-]+\. [0-9a-f]{64}$/,
	'its key wrapped under k1, and a blind index');
unlike($row, qr/ada\.\Q$tag\E|Lovelace|\Q$phone\E/,
	'and no detail in the clear (the id and country stay)')
	or diag $row;
like($row, qr/"id": "cus_\Q$tag\E"/, 'the customer id is kept as given');

$r = bearer($key, 'GET', "/v1/payments/$p1->{id}");
is_deeply($r->{json}{data}{customer}, $cust, 'GET opens it');

$r = pay($key, $cust, headers => ["Idempotency-Key: pii-$tag"]);
is_deeply($r->{json}{data}{customer}, $cust,
	'so does the replay of its Idempotency-Key');
is($r->{headers}{'idempotent-replayed'}, 'true', 'which is a replay');

my $p2 = pay($key, { %$cust, email => uc $email })->{json}{data};
pay($key, { email => "someone.else.$tag\@example.org" });

$r = bearer($key, 'GET', '/v1/payments?customer=' . uc($email));
is_deeply([ sort map { $_->{id} } @{$r->{json}{data}{data}} ],
	[ sort $p1->{id}, $p2->{id} ],
	'?customer= finds both payments by the blind index, in any case');
is($r->{json}{data}{data}[0]{customer}{name}, $name,
	'the list shows the details');

$r = bearer($okey, 'GET', "/v1/payments?customer=$email");
is(scalar @{$r->{json}{data}{data} // [1]}, 0,
	'another tenant finds nothing under that e-mail');
is(bearer($okey, 'GET', "/v1/payments/$p1->{id}")->{status}, 404,
	'nor the payment');

sub events {
	my ($id) = @_;
	my @ids = split /\n/, $t->psql("SELECT id FROM payment_events "
		. "WHERE payment_id = '$id'");
	return map { bearer($key, 'GET', "/v1/events/$_")->{json}{data} // {} }
		@ids;
}

my @ev = events($p1->{id});
ok(@ev && !grep({ ($_->{data}{object}{customer}{email} // '') ne $email }
	@ev), 'its events show the customer');

ok($t->poll(10, sub { received('/hook/pii') >= 2 }),
	'the webhooks are delivered');
my ($hook) = grep { index($_->{body}, $p1->{id}) >= 0 } received('/hook/pii');
is(decode_json($hook->{body} // '{}')->{data}{object}{customer}{email},
	$email, 'with the customer opened');

my $dump = join '',
	`$ENV{PAYFLOW_ROOT}/scripts/pf-env test dump --data-only 2>/dev/null`;
ok($dump =~ /COPY public.payments/, 'pg_dump of the database');
unlike($dump, qr/\Q$tag\E\@example|Lovelace \Q$tag\E|\Q$phone\E/i,
	'holds no customer e-mail, name or phone in the clear');

###############################################################################
# a ciphertext moved to another row does not open

my $p3 = pay($key, { email => "moved.$tag\@example.org" })->{json}{data};
$t->psql("UPDATE payments SET customer = "
	. "(SELECT customer FROM payments WHERE id = '$p1->{id}') "
	. "WHERE id = '$p3->{id}'");
$r = bearer($key, 'GET', "/v1/payments/$p3->{id}");
is($r->{status}, 500, 'a payment holding another row\'s ciphertext: 500');
is($r->{json}{error}{type}, 'api_error', 'with a JSON error')
	or diag $r->{raw};
like($t->error_log,
	qr/customer details of payment \Q$p3->{id}\E do not open/,
	'and a log line naming the payment');
unlike($t->error_log, qr/\Q$tag\E\@|Lovelace|pf1\.k1\./,
	'no detail or ciphertext in the log');
is(bearer($key, 'GET', "/v1/payments/$p1->{id}")->{status}, 200,
	'the payment it came from still opens');
$t->psql("UPDATE payments SET customer = NULL, customer_key = NULL, "
	. "customer_index = NULL WHERE id = '$p3->{id}'");

###############################################################################
# details written in the clear are sealed in the background

my $p4 = pay($key, { name => "Clear $tag" })->{json}{data};
$t->psql("UPDATE payments SET customer = jsonb_build_object('name', "
	. "'Clear $tag', 'email', 'clear.$tag\@example.org'), customer_key = "
	. "NULL, customer_index = NULL WHERE id = '$p4->{id}'");
ok($t->poll(15, sub { $t->psql("SELECT customer_key IS NOT NULL "
	. "FROM payments WHERE id = '$p4->{id}'") eq 't' }),
	'a customer in the clear is sealed by the workers');
$r = bearer($key, 'GET', "/v1/payments/$p4->{id}");
is($r->{json}{data}{customer}{email}, "clear.$tag\@example.org",
	'and still shown');
is(scalar @{bearer($key, 'GET',
	"/v1/payments?customer=clear.$tag\@example.org")->{json}{data}{data}}, 1,
	'and found by its new blind index');

###############################################################################
# a new current KEK wraps every key again, while payments go on

conf("payflow_kek k1 file=%%TESTDIR%%/kek1;\n"
	. "    payflow_kek k2 file=%%TESTDIR%%/kek2 current;");
$t->reload;

my ($made, $bad) = (0, 0);
for my $i (1 .. 40) {
	my $s = pay($key, { email => "load$i.$tag\@example.org" })->{status};
	$s == 200 ? $made++ : $bad++;
}
is("$made/$bad", '40/0', 'payments go on through the rotation');
ok($t->poll(20, sub { $t->psql("SELECT count(*) FROM payments "
	. "WHERE customer_key IS NOT NULL AND customer_key NOT LIKE 'pf1.k2.%'")
	eq '0' }), 'every payment\'s key is wrapped under k2');
ok($t->poll(10, sub { metric('payflow_secrets_pending') == 0 }),
	'payflow_secrets_pending reads 0');
my $usage = `$ENV{PAYFLOW_ROOT}/scripts/pf-kek usage --env test 2>&1`;
ok($usage =~ /^payments\s+k2\s+\d+$/m && $usage !~ /^payments\s+k1\s/m,
	'scripts/pf-kek usage: payments sealed under k2, none under k1')
	or diag $usage;

conf('payflow_kek k2 file=%%TESTDIR%%/kek2;');
$t->reload;
$r = bearer($key, 'GET', "/v1/payments/$p1->{id}");
is_deeply($r->{json}{data}{customer}, $cust,
	'k1 removed: the old payment still opens');

###############################################################################
# erasure

my $before = $t->psql("SELECT string_agg(coalesce(problem, 'ok'), ',') "
	. "FROM payflow_ledger_verify('$tenant', false)");

$r = bearer($key, 'POST', '/v1/customers/erase', { email => $email });
is($r->{status}, 200, 'POST /v1/customers/erase');
is($r->{json}{data}{payments_erased}, 2, 'two payments erased');

$r = bearer($key, 'GET', "/v1/payments/$p1->{id}");
is_deeply($r->{json}{data}{customer}, { erased => JSON::PP::true },
	'the payment shows customer {"erased": true}');
is($r->{json}{data}{amount_received}, 2000, 'its money is untouched');
is($t->psql("SELECT count(*) FROM payments WHERE id = '$p1->{id}' AND "
	. "customer_key IS NULL AND customer_index IS NULL"), 1,
	'its key and index are destroyed');

@ev = events($p1->{id});
ok(@ev && !grep({ !$_->{data}{object}{customer}{erased} } @ev),
	'its events show the customer erased')
	or diag explain [ map { $_->{data}{object}{customer} } @ev ];
$r = pay($key, $cust, headers => ["Idempotency-Key: pii-$tag"]);
is_deeply($r->{json}{data}{customer}, { erased => JSON::PP::true },
	'so does its stored answer');
is(scalar @{bearer($key, 'GET', "/v1/payments?customer=$email")
	->{json}{data}{data}}, 0, 'and ?customer= finds nothing');
is($t->psql("SELECT string_agg(coalesce(problem, 'ok'), ',') "
	. "FROM payflow_ledger_verify('$tenant', false)"), $before,
	'payflow_ledger_verify says what it said before');
is($t->psql("SELECT count(*) FROM audit_logs WHERE tenant_id = '$tenant' "
	. "AND action = 'customer.erased' AND details->>'payments' = '2'"), 1,
	'audited, with the count (and no e-mail)');
unlike($t->psql("SELECT details::text FROM audit_logs "
	. "WHERE tenant_id = '$tenant' AND action = 'customer.erased'"),
	qr/\Q$tag\E/, 'the audit row does not name the customer');

$r = bearer($key, 'POST', '/v1/customers/erase',
	{ id => "cus_$tag" });
is($r->{json}{data}{payments_erased}, 0,
	'erased by id: none left with that id');
my $p5 = pay($key, { name => "Named $tag", id => "cus2_$tag" })->{json}{data};
$r = bearer($key, 'POST', '/v1/customers/erase', { id => "cus2_$tag" });
is($r->{json}{data}{payments_erased}, 1, 'a customer with no e-mail, by id');
is_deeply(bearer($key, 'GET', "/v1/payments/$p5->{id}")->{json}{data}
	{customer}, { erased => JSON::PP::true }, 'erased');

$r = bearer($okey, 'POST', '/v1/customers/erase',
	{ email => "someone.else.$tag\@example.org" });
is($r->{json}{data}{payments_erased}, 0,
	'another tenant erases nothing of this one');

###############################################################################
# bad input

$r = bearer($key, 'POST', '/v1/customers/erase', {});
is("$r->{status} " . ($r->{json}{error}{param} // ''), '400 email',
	'no customer named: 400, param email');
$r = bearer($key, 'POST', '/v1/customers/erase',
	{ email => $email, id => 'x' });
is("$r->{status} " . ($r->{json}{error}{param} // ''), '400 id',
	'both: 400, param id');
$r = bearer($key, 'POST', '/v1/customers/erase', { email => 'nobody' });
is("$r->{status} " . ($r->{json}{error}{param} // ''), '400 email',
	'not an e-mail: 400, param email');
$r = bearer($key, 'POST', '/v1/customers/erase', { phone => '1' });
is("$r->{status} " . ($r->{json}{error}{param} // ''), '400 phone',
	'an unknown field: 400, param phone');

###############################################################################
# configuration

sub refused {
	my ($keks) = @_;
	conf($keks);
	my ($rc, $out) = $t->test_config;
	return $rc ? $out : '';
}

like(refused('payflow_customer_pii sealed;'),
	qr/"payflow_customer_pii sealed" requires "payflow_kek"/,
	'sealed without a KEK stops nginx -t, naming the directive');
like(refused('payflow_customer_pii open;'),
	qr/invalid value "open"/, 'so does an unknown mode');
conf('payflow_kek k2 file=%%TESTDIR%%/kek2;');

$t->stop;

# the test database is shared: what this test's keys sealed is left to no
# worker of the next tests (they do not hold these keys)
$t->psql("UPDATE webhook_endpoints SET enabled = false, "
	. "disabled_reason = 'disabled' WHERE id = '$endpoint'");

# payments this test's keys sealed (its own, and those of earlier tests its
# workers sealed) keep no details the next tests' workers could not open
$t->psql("UPDATE payments SET customer = NULL, customer_key = NULL, "
	. "customer_index = NULL WHERE customer_key IS NOT NULL");
