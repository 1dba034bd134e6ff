// Starts GraphiQL from the globals of the scripts before it (React, ReactDOM, GraphiQL,
// graphqlWs). Kept out of the HTML so the page needs no inline script under a strict CSP.
(function () {
  "use strict";

  var PLACEHOLDER = "<your key>";
  var DEFAULT_HEADERS = JSON.stringify({ Authorization: "Bearer " + PLACEHOLDER }, null, 2);
  var DEFAULT_QUERY = "# Put your API key under Headers, then run.\n{\n  __typename\n}\n";
  var MISSING_KEY = "Replace " + PLACEHOLDER + " in the Headers tab with your API key.";
  // Long enough that typing a key does not introspect once per keystroke.
  var REFETCH_AFTER_MS = 500;

  var container = document.getElementById("graphiql");
  var httpUrl = new URL(container.dataset.graphqlPath, location.href);
  var wsUrl = new URL(httpUrl.href);
  wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";

  // The headers editor's latest text; the WebSocket reads it when it connects, because
  // GraphiQL hands headers only to HTTP requests.
  var latestHeaders = DEFAULT_HEADERS;

  function parseHeaders(text) {
    try {
      var value = JSON.parse(text || "{}");
      return value && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch (_) {
      return null;
    }
  }

  function stillPlaceholder(headers) {
    return Object.keys(headers || {}).some(function (name) {
      return String(headers[name]).indexOf(PLACEHOLDER) >= 0;
    });
  }

  function makeFetcher() {
    var wsClient = graphqlWs.createClient({
      url: wsUrl.href,
      lazy: true,
      connectionParams: function () {
        return parseHeaders(latestHeaders) || {};
      },
    });
    var base = GraphiQL.createFetcher({
      url: httpUrl.href,
      subscriptionUrl: wsUrl.href,
      wsClient: wsClient,
    });
    // Sending the placeholder would only earn a 401 (and a failed-auth log line).
    var fetcher = function (params, options) {
      if (stillPlaceholder(options && options.headers)) {
        return Promise.resolve({ errors: [{ message: MISSING_KEY }] });
      }
      return base(params, options);
    };
    fetcher.dispose = function () {
      wsClient.dispose();
    };
    return fetcher;
  }

  function App() {
    var state = React.useState(makeFetcher);
    var fetcher = state[0];
    var setFetcher = state[1];
    var timer = React.useRef(0);
    var applied = React.useRef(JSON.stringify(parseHeaders(DEFAULT_HEADERS)));

    // A socket opened with the old headers stays authenticated as them: close it.
    React.useEffect(function () {
      return fetcher.dispose;
    }, [fetcher]);

    // A new fetcher makes GraphiQL introspect again, now with the edited headers.
    function onEditHeaders(text) {
      latestHeaders = text;
      clearTimeout(timer.current);
      timer.current = setTimeout(function () {
        var parsed = parseHeaders(text);
        if (parsed === null || JSON.stringify(parsed) === applied.current) return;
        applied.current = JSON.stringify(parsed);
        setFetcher(function () {
          return makeFetcher();
        });
      }, REFETCH_AFTER_MS);
    }

    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      // An API key in localStorage would outlive the tab and be readable by any script.
      shouldPersistHeaders: false,
      onEditHeaders: onEditHeaders,
    });
  }

  ReactDOM.createRoot(container).render(React.createElement(App));
})();
