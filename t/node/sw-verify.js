// Checks webhooks as a tenant would, with the Standard Webhooks
// reference library (the `standardwebhooks` package): for each delivery
// recorded by t/emulators/receiver.lua, "ok" or the library's error.
//
//   node sw-verify.js <secret> <deliveries.json>
//
// deliveries.json: an array of {id, timestamp, signature, body}.  The
// library also refuses timestamps more than 5 minutes from now.

'use strict';

const fs = require('fs');
const { Webhook } = require('standardwebhooks');

const wh = new Webhook(process.argv[2]);
const deliveries = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));

for (const d of deliveries) {
    try {
        wh.verify(d.body, {
            'webhook-id': d.id,
            'webhook-timestamp': d.timestamp,
            'webhook-signature': d.signature,
        });
        console.log('ok');
    } catch (e) {
        console.log(e.message);
    }
}
