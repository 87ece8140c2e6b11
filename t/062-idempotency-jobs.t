#!/usr/bin/perl

# The background jobs every worker runs: expired idempotency keys are
# purged, and a key left half-done by a request that died (its operation
# committed, its answer never stored) is completed with the object's state
# once its lock expires, so that the client's retry gets an answer instead
# of a key stuck "in progress".  A key whose lock still holds is left to
# its request; a key whose operation never ran (nothing to answer with)
# is deleted, so that a retry runs afresh.  Whether a capture or cancel
# ran is decided from what the server wrote in the key's transaction, not
# from the client's X-Request-Id: a capture of a canceled payment that
# died in its first round trip, retried under a request id the cancel
# used, gets the true 409, not a stored 200.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::SHA qw/sha256_hex/;
use Test::More;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(22);

my $conf = <<'EOF';

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=2;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    payflow_jobs_interval %%INTERVAL%%;
    %%ADMIN_KEY%%

    server {
        listen       127.0.0.1:%%PORT_8080%%;
        server_name  localhost;

        location /v1/admin/ { payflow_admin; }
        location /          { payflow_api; }
    }
}

EOF

(my $bad = $conf) =~ s/%%INTERVAL%%/10ms/;
$t->write_file_expand('nginx.conf', $bad);
my ($rc, $out) = $t->test_config;
like($out, qr/"payflow_jobs_interval" must be at least 100ms/,
	'an interval below 100ms is refused');

$conf =~ s/%%INTERVAL%%/200ms/;
$t->write_file_expand('nginx.conf', $conf);
$t->run;

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'jobs' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ role => 'developer' });
my $key = $r->{json}{data}{secret};

sub call { bearer($key, @_) }
sub key_sql { my $k = shift; "SELECT $_[0] FROM idempotency_keys "
	. "WHERE tenant_id = '$tenant' AND key = '$k'" }

# a payment and a refund made with keys: their rows are the templates
my %pay = (amount => 4200, currency => 'usd');
my $p = call('POST', '/v1/payments', \%pay,
	headers => ['Idempotency-Key: pay-1'])->{json}{data};
my %ref = (payment => $p->{id}, amount => 1000);
my $f = call('POST', '/v1/refunds', \%ref,
	headers => ['Idempotency-Key: ref-1'])->{json}{data};
is("$p->{status} $f->{status}", 'succeeded succeeded', 'made with keys');

# what a worker killed between its commit and storing the answer leaves:
# the same request's key, not finished, its lock about to expire
sub stuck {
	my ($from, $as, $object, $lock) = @_;
	$t->psql("INSERT INTO idempotency_keys (tenant_id, livemode, key, "
		. "fingerprint, method, path, phase, locked_until, payment_id, "
		. "object_id, request_id) "
		. "SELECT tenant_id, livemode, '$as', fingerprint, method, path, "
		. "'provider_called', now() + interval '$lock', "
		. ($object ? "payment_id, object_id" : "NULL, NULL")
		. ", 'req_dead' FROM idempotency_keys WHERE tenant_id = '$tenant' "
		. "AND key = '$from'");
}

stuck('pay-1', 'pay-2', 1, '1 second');
stuck('ref-1', 'ref-2', 1, '1 second');
stuck('pay-1', 'pay-held', 1, '1 hour');
stuck('pay-1', 'pay-none', 0, '-1 second');

# another tenant's key naming this tenant's payment in a capture that
# matched nothing (its client gone before the answer was stored): the
# completer must not answer it with this tenant's payment
$r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'other' });
my $other = $r->{json}{data}{id};
$t->psql("INSERT INTO idempotency_keys (tenant_id, livemode, key, "
	. "fingerprint, method, path, phase, locked_until, payment_id, "
	. "object_id, request_id) SELECT '$other', false, 'cap-x', fingerprint, "
	. "method, '/v1/payments/' || payment_id || '/capture', "
	. "'provider_called', now() - interval '1 second', payment_id, "
	. "payment_id, 'req_other' FROM idempotency_keys "
	. "WHERE tenant_id = '$tenant' AND key = 'pay-1'");

is(call('POST', '/v1/payments', \%pay,
	headers => ['Idempotency-Key: pay-2'])->{json}{error}{code},
	'idempotency_key_in_use', 'while the lock holds, a retry is told 409');

# and a key past its retention
$t->psql("INSERT INTO idempotency_keys (tenant_id, livemode, key, "
	. "fingerprint, method, path, phase, response_status, response_body, "
	. "created_at, expires_at) SELECT tenant_id, livemode, 'pay-old', "
	. "fingerprint, method, path, 'finished', 200, '{}', "
	. "now() - interval '25 hours', now() - interval '1 hour' "
	. "FROM idempotency_keys WHERE tenant_id = '$tenant' AND key = 'pay-1'");

ok($t->poll(10, sub {
	$t->psql(key_sql('pay-2', 'phase')) eq 'finished'
	&& $t->psql(key_sql('ref-2', 'phase')) eq 'finished' }),
	'the abandoned keys are completed once their locks expire');
ok($t->poll(10, sub { $t->psql(key_sql('pay-old', 'count(*)')) eq '0' }),
	'the expired key is purged');
is($t->psql("SELECT count(*) FROM idempotency_keys WHERE key = 'cap-x'"),
	0, 'another tenant\'s key never gets this tenant\'s payment');
is($t->psql(key_sql('pay-held', 'phase')), 'provider_called',
	'a key whose lock holds is left to its request');
is($t->psql(key_sql('pay-none', 'count(*)')), 0,
	'a key whose operation never ran is deleted: a retry runs afresh');

# the client's retry now gets the object
$r = call('POST', '/v1/payments', \%pay,
	headers => ['Idempotency-Key: pay-2']);
is("$r->{status} " . ($r->{headers}{'idempotent-replayed'} // '-'),
	'200 true', 'the retry of the payment is a replay');
is($r->{json}{data}{id} . ' ' . $r->{json}{data}{amount_refunded},
	"$p->{id} 1000", 'of the payment as it stands');
is($r->{json}{meta}{request_id}, 'req_dead',
	'under the request id of the request that died');

$r = call('POST', '/v1/refunds', \%ref,
	headers => ['Idempotency-Key: ref-2']);
is("$r->{status} $r->{json}{data}{id} $r->{json}{data}{object}",
	"200 $f->{id} refund", 'the retry of the refund answers the refund');

# and the key's replay stays byte-identical
is(call('POST', '/v1/refunds', \%ref,
	headers => ['Idempotency-Key: ref-2'])->{body}, $r->{body},
	'again: the same bytes');

is($t->psql("SELECT count(*) FROM payments WHERE tenant_id = '$tenant'")
	. ' ' . $t->psql("SELECT count(*) FROM refunds r JOIN payments p "
	. "ON p.id = r.payment_id WHERE p.tenant_id = '$tenant'"),
	'1 1', 'no payment or refund made twice');

# a capture or cancel that died in its first round trip: its key is in
# the database, not finished, lock expired; the payment moved (or not) in
# the key's own transaction
sub dead_key {
	my ($key_name, $payment, $op, $rid, $also) = @_;
	my $path = "/v1/payments/$payment/$op";
	my $fp = sha256_hex("POST\n$path\n{}");
	$t->psql("BEGIN; INSERT INTO idempotency_keys (tenant_id, livemode, "
		. "key, fingerprint, method, path, phase, locked_until, "
		. "payment_id, request_id, object_id) VALUES ('$tenant', false, "
		. "'$key_name', decode('$fp', 'hex'), 'POST', '$path', "
		. "'provider_called', now() - interval '1 second', '$payment', "
		. "'$rid', '$payment'); " . ($also // '') . ' COMMIT;');
}

my %manual = (amount => 3000, currency => 'usd', capture_method => 'manual');
my $c = call('POST', '/v1/payments', \%manual)->{json}{data}{id};
$r = call('POST', "/v1/payments/$c/cancel", {},
	headers => ['X-Request-Id: req_reused']);
is($r->{json}{data}{status}, 'canceled', 'canceled under req_reused');

dead_key('cap-dead', $c, 'capture', 'req_reused');
my @seen;
for (1 .. 3) {
	$r = call('POST', "/v1/payments/$c/capture", {},
		headers => ['Idempotency-Key: cap-dead',
			'X-Request-Id: req_reused']);
	push @seen, ($r->{status} // '') . ' ' . ($r->{json}{error}{code}
		// $r->{json}{data}{status} // '') . ' '
		. ($r->{headers}{'idempotent-replayed'} // '-');
	last if $seen[-1] !~ /idempotency_key_in_use/;
}
is($seen[-1], '409 payment_not_capturable -',
	'a capture that never ran, retried under a reused request id: 409')
	or diag(join "\n", @seen);
ok(!grep({ /^200/ } @seen), 'never answered as a success');

# one that did run: the cancel and its key in one transaction
my $d = call('POST', '/v1/payments', \%manual)->{json}{data}{id};
dead_key('cancel-dead', $d, 'cancel', 'req_gone',
	"UPDATE payments SET status = 'canceled', amount_capturable = 0 "
	. "WHERE id = '$d';");
$r = call('POST', "/v1/payments/$d/cancel", {},
	headers => ['Idempotency-Key: cancel-dead']);
is(($r->{status} // '') . ' ' . ($r->{json}{data}{status} // '') . ' '
	. ($r->{headers}{'idempotent-replayed'} // '-'), '200 canceled true',
	'a cancel that ran and died before its answer: replayed as done');
is($r->{json}{meta}{request_id}, 'req_gone',
	'under the request id of the request that died');

# retries racing each other (and the completer) over a key whose lock has
# just expired: one of them stores its answer, all of them send that one
stuck('pay-1', 'pay-race', 1, '-1 second');
my $json = '{"amount":4200,"currency":"usd"}';
my $raw = "POST /v1/payments HTTP/1.1\r\nHost: localhost\r\n"
	. "Authorization: Bearer $key\r\nIdempotency-Key: pay-race\r\n"
	. "Content-Type: application/json\r\n"
	. 'Content-Length: ' . length($json) . "\r\nConnection: close\r\n\r\n"
	. $json;
my @race = http_many(5, '/v1/payments', request => $raw);
my $stored = call('POST', '/v1/payments', \%pay,
	headers => ['Idempotency-Key: pay-race']);
my @answered = grep { ($_->{status} // 0) == 200 } @race;
my @waiting = grep { ($_->{json}{error}{code} // '') eq
	'idempotency_key_in_use' } @race;
is(scalar(@answered) + scalar(@waiting), 5,
	'five retries at once: answered, or told to retry (409)');
is(scalar(grep { $_->{body} ne $stored->{body} } @answered) . ' '
	. ($stored->{headers}{'idempotent-replayed'} // '-'), '0 true',
	'every answer is what the key replays');

$t->stop;
is($t->alert_lines, 0, 'no alerts');

###############################################################################
