#!/usr/bin/perl

# Workers SIGKILLed in the middle of payments lose no money and make none
# twice: with two workers and the background jobs every 200ms, client
# processes send POST /v1/payments, each with its own Idempotency-Key,
# while the workers are killed again and again (the master respawns
# them).  A payment and its key's stored answer commit together, so no
# key is left half-done.  Every key is retried until it is answered (a
# lost answer is replayed, a request that died before its commit is made
# by the retry); then every key maps
# to exactly one payment of the right amount in its final sandbox state,
# no payment is without its key, every key is finished, a second retry
# replays the first answer byte for byte, the ledger balances and its
# hash chain verifies.  The only crashes in the log are the kills.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use POSIX ();
use Test::More;
use Time::HiRes qw/time sleep/;
use PayFlow::Test;

my $t = PayFlow::Test->new->has_module->has_pg->plan(24);

# two workers; the harness's globals say one, and nginx takes
# worker_processes only once
my $globals = $t->test_globals;
$globals =~ s/^worker_processes 1;$/worker_processes 2;/m
	or BAIL_OUT('no worker_processes line in the harness globals');

$t->write_file_expand('nginx.conf', <<"EOF");

$globals

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    payflow_db "%%PG_CONNINFO%%" password_file=%%PG_PASSWORD_FILE%%
               pool=4 queue=512;
    payflow_key_pepper file=%%PEPPER_FILE%%;
    payflow_jobs_interval 200ms;
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

my $r = $t->admin_api('POST', '/v1/admin/tenants', { name => 'kill' });
my $tenant = $r->{json}{data}{id};
$r = $t->admin_api('POST', "/v1/admin/tenants/$tenant/api_keys",
	{ role => 'developer' });
my $key = $r->{json}{data}{secret};

# the n-th payment of client c: its key, its exact body, and the status
# the sandbox gives its amount (..02 declined, ..08 requires_action; the
# others succeed; ..05 and ..09 are never used)
my @currencies = qw/usd eur jpy/;

sub job {
	my ($c, $n) = @_;
	my $k = "kill-$c-$n";
	my $tail = $n % 10 == 3 ? '02' : $n % 10 == 7 ? '08'
		: (qw/00 10 25 50 99/)[$n % 5];
	my $amount = 1000 + 100 * (($c * 37 + $n) % 90) + $tail;
	my $cur = $currencies[($c + $n) % 3];
	my $status = $tail eq '02' ? 'failed'
		: $tail eq '08' ? 'requires_action' : 'succeeded';
	return { key => $k, amount => $amount, currency => $cur,
		status => $status,
		body => qq{{"amount":$amount,"currency":"$cur"}} };
}

sub post {
	my ($j, %opts) = @_;
	return http_parse(http_request('POST', '/v1/payments',
		headers => [ "Authorization: Bearer $key",
			"Idempotency-Key: $j->{key}",
			'Content-Type: application/json' ],
		body => $j->{body}, timeout => 10, %opts));
}

# the workers: children of the master
sub workers {
	my $master = $t->pid;
	my @w;
	for my $stat (glob '/proc/[0-9]*/stat') {
		open my $fh, '<', $stat or next;
		my $s = <$fh>;
		close $fh;
		# the command may hold spaces and parentheses: ppid follows
		# the state after the last ')'
		next unless defined $s && $s =~ /\)\s+\S+\s+(\d+)\s/;
		next unless $1 == $master;
		push @w, $stat =~ m{^/proc/(\d+)/};
	}
	return @w;
}

sub up {
	my @w = workers();
	return @w == 2 && (bearer($key, 'GET', '/v1/me')->{status} // 0) == 200;
}

ok($t->poll(10, \&up), 'two workers serve');

###############################################################################
# clients keep payments in flight while the workers are killed

my $clients = 4;
my $stop = $t->testdir . '/stop';
my @kids;

for my $c (1 .. $clients) {
	my $pid = fork // die "fork: $!";
	if ($pid == 0) {
		# the harness notes failed reads; keep them out of TAP
		Test::More->builder->output('/dev/null');
		open my $log, '>', $t->testdir . "/client-$c.log" or die;
		$log->autoflush(1);
		my $json = JSON::PP->new->canonical;
		for (my $n = 1; !-e $stop && $n < 10000; $n++) {
			my $j = job($c, $n);
			my $res = post($j);
			print $log $json->encode({ c => $c, n => $n,
				status => $res->{status}, body => $res->{body},
				error => $PayFlow::Test::LAST_ERROR }), "\n";
		}
		close $log;
		POSIX::_exit(0);
	}
	push @kids, $pid;
}

# SIGKILL a worker (now and then both) every 150 to 400 ms for 6 s
my ($kills, %killed) = (0);
my $end = time + 6;
sleep 0.5;

while (time < $end) {
	my @w = workers();
	@w = ($w[int rand @w]) if @w > 1 && rand() < 0.7;
	for my $w (@w) {
		next if $killed{$w};
		if (kill 'KILL', $w) {
			$killed{$w} = 1;
			$kills++;
		}
	}
	sleep 0.15 + rand 0.25;
}

open my $fh, '>', $stop or die "$stop: $!";
close $fh;

for my $pid (@kids) {
	my $rc = $t->wait_pid($pid, 20);
	defined $rc or kill 'KILL', $pid;
}

ok($t->poll(15, \&up), 'the master respawned both workers');

# what the clients saw
my (@jobs, %first);
for my $c (1 .. $clients) {
	open my $log, '<', $t->testdir . "/client-$c.log" or die;
	while (my $line = <$log>) {
		my $e = eval { decode_json($line) } or next;
		my $j = job($e->{c}, $e->{n});
		$first{$j->{key}} = $e;
		push @jobs, $j;
	}
}

# an answer: 200, or 402 for a declined payment (the payment in the error)
sub answered { my $s = shift // 0; $s == 200 || $s == 402 }
sub payment_of { my $r = shift; $r->{json}{data} // $r->{json}{error}{payment} }

my @lost = grep { !defined $first{$_->{key}}{status} } @jobs;
my @ok = grep { answered($first{$_->{key}}{status}) } @jobs;
my @other = grep { my $s = $first{$_->{key}}{status};
	defined $s && !answered($s) } @jobs;

note(scalar(@jobs) . " payments sent, $kills workers killed, "
	. scalar(@lost) . ' answers lost, ' . scalar(@other) . ' not 200: '
	. join(' ', map { $first{$_->{key}}{status} } @other));

cmp_ok($kills, '>=', 5, "workers were killed ($kills times)");
cmp_ok(scalar @jobs, '>=', 100, 'payments were sent all the while ('
	. scalar(@jobs) . ')');
cmp_ok(scalar @lost, '>=', 1, 'some requests died with their worker ('
	. scalar(@lost) . ')');

# a payment and its key's answer commit together: a request that died
# either left nothing or left both
is($t->psql("SELECT count(*) FROM idempotency_keys "
	. "WHERE tenant_id = '$tenant' AND phase <> 'finished'"), 0,
	'no key is left half-done by the kills');

###############################################################################
# every key retried until answered: a lost answer whose payment committed
# is replayed, one that died before its commit is made by the retry

my (%final, %last);
my @todo = @jobs;
my $deadline = time + 45;

while (@todo && time < $deadline) {
	my @again;
	for my $j (@todo) {
		my $res = post($j);
		if (answered($res->{status})) {
			$final{$j->{key}} = $res;
			next;
		}
		$last{$j->{key}} = join ' ', $res->{status} // 'none',
			$res->{json}{error}{code} // '-';
		push @again, $j;
	}
	@todo = @again;
	sleep 1 if @todo;
}

is(scalar @todo, 0, 'every key is answered 200 in the end')
	or diag(join "\n", map { "$_->{key}: $last{$_->{key}}" } @todo);

my $in_use = grep { /idempotency_key_in_use/ } values %last;
my $replayed = grep { ($final{$_->{key}}{headers}{'idempotent-replayed'}
	// '') eq 'true' } @lost;
note("$in_use keys were in use (409) until their lock expired; of the "
	. scalar(@lost) . " lost answers $replayed were replayed, the others "
	. 'made or finished by the retry');

my @bad = grep { $first{$_->{key}}{body} ne $final{$_->{key}}{body} }
	grep { $final{$_->{key}} } @ok;
is(scalar @bad, 0, 'a key answered during the kills replays '
	. 'those bytes') or diag(join "\n", map { $_->{key} } @bad);

# the payment each key answers with is the one asked for
@bad = ();
my %pay_of;
for my $j (grep { $final{$_->{key}} } @jobs) {
	my $d = payment_of($final{$j->{key}}) // {};
	$pay_of{$j->{key}} = $d->{id} // '';
	push @bad, "$j->{key}: " . join(' ', map { $_ // '-' }
		@$d{qw/amount currency status/})
		unless ($d->{amount} // 0) == $j->{amount}
		&& ($d->{currency} // '') eq $j->{currency}
		&& ($d->{status} // '') eq $j->{status};
}
is(scalar @bad, 0, 'each key answers its own payment in its final state')
	or diag(join "\n", @bad);

my %ids;
$ids{$_}++ for values %pay_of;
is(scalar(keys %ids), scalar(keys %pay_of), 'no two keys answer the same '
	. 'payment');

# and again: the stored answer, byte for byte
@bad = ();
for my $j (grep { $final{$_->{key}} } @jobs) {
	my $res = post($j);
	push @bad, "$j->{key}: " . ($res->{status} // 'none')
		unless answered($res->{status})
		&& ($res->{headers}{'idempotent-replayed'} // '') eq 'true'
		&& $res->{body} eq $final{$j->{key}}{body};
}
is(scalar @bad, 0, 'a second retry of every key replays the same bytes')
	or diag(join "\n", @bad);

###############################################################################
# the database: one payment per key, none without a key, all finished

sub sql { $t->psql(shift) }

my %db_key = map { split /\|/ } split /\n/, sql("SELECT key, "
	. "coalesce(payment_id, '') FROM idempotency_keys "
	. "WHERE tenant_id = '$tenant' AND key LIKE 'kill-%'");

is(scalar(keys %db_key), scalar @jobs, 'every key sent is in the database '
	. '(' . scalar(@jobs) . ')');
@bad = grep { ($db_key{$_->{key}} // '') ne ($pay_of{$_->{key}} // '-') }
	@jobs;
is(scalar @bad, 0, 'and names the payment it answered with')
	or diag(join "\n", map { "$_->{key}: db "
		. ($db_key{$_->{key}} // '-') . ', answered '
		. ($pay_of{$_->{key}} // '-') } @bad);

is(sql("SELECT count(*) FROM idempotency_keys WHERE tenant_id = "
	. "'$tenant' AND phase <> 'finished'"), 0, 'every key is finished');

is(sql("SELECT count(*) FROM idempotency_keys k LEFT JOIN payments p "
	. "ON p.id = k.payment_id WHERE k.tenant_id = '$tenant' "
	. "AND k.key LIKE 'kill-%' AND p.id IS NULL"), 0,
	'no key without its payment');

is(sql("SELECT count(*) FROM payments p WHERE p.tenant_id = '$tenant' "
	. "AND NOT EXISTS (SELECT 1 FROM idempotency_keys k "
	. "WHERE k.tenant_id = p.tenant_id AND k.payment_id = p.id)"), 0,
	'no payment without its key');

is(sql("SELECT count(*) || ' ' || count(DISTINCT payment_id) "
	. "FROM idempotency_keys WHERE tenant_id = '$tenant'") . ' '
	. sql("SELECT count(*) FROM payments WHERE tenant_id = '$tenant'"),
	join(' ', (scalar @jobs) x 3),
	'as many payments as keys: none made twice');

is(sql("SELECT count(*) FROM payments WHERE tenant_id = '$tenant' "
	. "AND status IN ('pending', 'processing')"), 0,
	'no payment left half-made');

is(sql("SELECT count(*) FROM (SELECT currency, sum(CASE direction "
	. "WHEN 'debit' THEN amount ELSE -amount END) s FROM ledger_entries "
	. "WHERE tenant_id = '$tenant' GROUP BY currency) x WHERE s <> 0"), 0,
	'the ledger balances in every currency');
is(sql("SELECT count(*) FROM ledger_entries WHERE tenant_id = '$tenant'")
	. ' ' . sql("SELECT coalesce(broken_seq, 0) FROM "
	. "payflow_ledger_verify('$tenant', false)"),
	2 * grep({ $_->{status} eq 'succeeded' } @jobs) . ' 0',
	'two entries per payment captured, and the hash chain verifies');

###############################################################################
# the log: the kills, and nothing else

diag("the $kills workers \"exited on signal 9\" that the harness is about "
	. 'to list are this test\'s own kills');
$t->stop;

my @crash = PayFlow::Test::crash_lines_in($t->error_log);
my @sig9 = grep { /worker process \d+ exited on signal 9$/ } @crash;
cmp_ok(scalar @sig9, '>=', 1, 'the kills are in the log (' . scalar(@sig9)
	. ')');
cmp_ok(scalar @sig9, '<=', $kills, 'no more than were sent');

my @other_crash = grep { !/worker process \d+ exited on signal 9$/ } @crash;
is(scalar @other_crash, 0, 'no other crash')
	or diag(join "\n", @other_crash);

my @alerts = grep { !/worker process \d+ exited on signal 9$/ }
	$t->alert_lines;
is(scalar @alerts, 0, 'no other alert') or diag(join "\n", @alerts);

###############################################################################
