// The smallest Probot app that does what preview-bot's intake does for a pull_request event: Probot
// verifies the signature, parses the payload and routes it to this handler, which queues nothing.
export default (app) => {
  app.on("pull_request", async (context) => {
    context.log.debug({ number: context.payload.number }, "pull_request received");
  });
};
