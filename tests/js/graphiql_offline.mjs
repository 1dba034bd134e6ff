// Drives the GraphiQL page as a person would, with every non-local request blocked:
// open it, put an API key in the headers, wait for the schema, run one operation and
// wait for the expected text in the result pane.
//
// stdin: {"base": "http://127.0.0.1:PORT", "apiKey": "...", "operation": "subscription {…}",
//         "expect": "tick 2", "graphqlPath": "/graphql", "timeoutMs": 30000,
//         "screenshot": "/tmp/x.png" (optional)}
// stdout (last line): {"ok": true, "blocked": [], "consoleErrors": [], "initialHeaders": "…",
//                      "headers": "…", "rootTypes": […], "result": "…", …}
import { launch, runScript } from "./browser.mjs";

const PLACEHOLDER = "<your key>";

// GraphiQL's editors are CodeMirror 5 instances, reachable from their wrapper element.
function editorValue(page, selector) {
  return page.$eval(selector, (element) => element.CodeMirror.getValue());
}

const HEADERS_EDITOR = 'section[aria-label="Headers"] .graphiql-editor:not(.hidden) .CodeMirror';
const QUERY_EDITOR = ".graphiql-query-editor .CodeMirror";
const RESULT_PANE = ".graphiql-response .CodeMirror";

runScript(async (args, partial) => {
  const { base, apiKey, operation, expect } = args;
  if (!base || !apiKey || !operation || !expect) {
    throw new Error("needs base, apiKey, operation and expect");
  }
  const graphqlUrl = new URL(args.graphqlPath ?? "/graphql", base).href;
  const timeout = args.timeoutMs ?? 30000;
  const started = Date.now();
  const timings = {};
  const mark = (name) => (timings[name] = Date.now() - started);

  const browser = await launch({ blockExternal: true });
  partial.blocked = browser.blocked;
  partial.consoleErrors = browser.consoleErrors;
  partial.timings = timings;
  const { page } = browser;
  page.setDefaultTimeout(timeout);
  try {
    const response = await page.goto(graphqlUrl, { waitUntil: "load" });
    if (!response || response.status() !== 200) {
      throw new Error(`GET ${graphqlUrl} answered ${response?.status()}`);
    }
    await page.waitForSelector(QUERY_EDITOR);
    await page.waitForSelector(HEADERS_EDITOR, { state: "visible" });
    mark("rendered");

    const shownHeaders = await editorValue(page, HEADERS_EDITOR);
    partial.initialHeaders = shownHeaders;
    if (!shownHeaders.includes(PLACEHOLDER)) {
      throw new Error(`headers editor does not offer the placeholder: ${shownHeaders}`);
    }

    const introspected = page.waitForResponse(async (candidate) => {
      const request = candidate.request();
      if (request.method() !== "POST" || candidate.url() !== graphqlUrl) return false;
      if (request.headers().authorization !== `Bearer ${apiKey}`) return false;
      if (request.postDataJSON()?.operationName !== "IntrospectionQuery") return false;
      const body = await candidate.json().catch(() => null);
      return candidate.status() === 200 && Boolean(body?.data?.__schema);
    });
    introspected.catch(() => {}); // awaited below; a failure before that is reported instead
    // Select the placeholder and type over it; typing the whole JSON instead would
    // fight CodeMirror's bracket auto-closing.
    await page.$eval(
      HEADERS_EDITOR,
      (element, placeholder) => {
        const editor = element.CodeMirror;
        const start = editor.getValue().indexOf(placeholder);
        editor.focus();
        editor.setSelection(
          editor.posFromIndex(start),
          editor.posFromIndex(start + placeholder.length),
        );
      },
      PLACEHOLDER,
    );
    await page.keyboard.type(apiKey);
    partial.headers = await editorValue(page, HEADERS_EDITOR);
    await introspected;
    mark("introspected");

    await page.click('.graphiql-sidebar button[aria-label="Show Documentation Explorer"]');
    await page.waitForSelector(".graphiql-doc-explorer-root-type");
    partial.rootTypes = await page.locator(".graphiql-doc-explorer-root-type").allInnerTexts();
    mark("docs");

    // Set as a whole for the same reason as above: auto-closed brackets.
    await page.$eval(QUERY_EDITOR, (element, text) => element.CodeMirror.setValue(text), operation);
    // GraphiQL parses the editor 100 ms after a change and picks HTTP or WebSocket from
    // that parse; a click before it would send a subscription as a plain POST.
    await page.waitForFunction((selector) => {
      const editor = document.querySelector(selector).CodeMirror;
      return editor.documentAST?.loc?.source.body === editor.getValue();
    }, QUERY_EDITOR);
    await page.click(".graphiql-execute-button");
    await page.waitForFunction(
      ([selector, text]) => document.querySelector(selector)?.CodeMirror.getValue().includes(text),
      [RESULT_PANE, expect],
    );
    mark("result");
    partial.result = await editorValue(page, RESULT_PANE);
    if (args.screenshot) await page.screenshot({ path: args.screenshot });
    return { ...partial };
  } catch (error) {
    partial.result = await editorValue(page, RESULT_PANE).catch(() => undefined);
    if (args.screenshot) await page.screenshot({ path: args.screenshot }).catch(() => {});
    throw error;
  } finally {
    await browser.close();
  }
});
