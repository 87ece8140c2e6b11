// Stripe-Signature headers made by Stripe's own library (the `stripe`
// package's test helper), so PayFlow's verifier is checked against the
// real scheme and not only against the tests' idea of it.
//
//   node stripe-sign.js <payload file> <secret> [timestamp]
//       prints the Stripe-Signature header for the payload
//   node stripe-sign.js --verify <payload file> <header> <secret>
//       prints "ok" if Stripe's library accepts the header, else the error

'use strict';

const fs = require('fs');
const Stripe = require('stripe');

const stripe = new Stripe('sk_test_unused');
const args = process.argv.slice(2);

if (args[0] === '--verify') {
    const payload = fs.readFileSync(args[1], 'utf8');
    try {
        stripe.webhooks.constructEvent(payload, args[2], args[3]);
        console.log('ok');
    } catch (e) {
        console.log(e.message);
    }
} else {
    const payload = fs.readFileSync(args[0], 'utf8');
    const opts = { payload: payload, secret: args[1] };
    if (args[2]) {
        opts.timestamp = parseInt(args[2], 10);
    }
    console.log(stripe.webhooks.generateTestHeaderString(opts));
}
