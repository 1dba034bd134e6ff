// What a page tries to load from other hosts, with all of it blocked: opens `url`,
// lets it run for `settleMs`, and reports the blocked requests and console errors.
//
// stdin: {"url": "http://127.0.0.1:PORT/page", "settleMs": 1000}
// stdout (last line): {"ok": true, "blocked": [...], "consoleErrors": [...]}
import { launch, runScript } from "./browser.mjs";

runScript(async (args, partial) => {
  if (!args.url) throw new Error("needs url");
  const browser = await launch({ blockExternal: true });
  partial.blocked = browser.blocked;
  partial.consoleErrors = browser.consoleErrors;
  try {
    await browser.page.goto(args.url, { waitUntil: "load" });
    await browser.page.waitForTimeout(args.settleMs ?? 1000);
    return { ...partial };
  } finally {
    await browser.close();
  }
});
