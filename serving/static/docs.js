// Renders the service's own OpenAPI description (the URL in #swagger-ui's data-spec) with
// Swagger UI, loaded from the service (serving/pages.py), without the URL bar of its
// standalone layout.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.spec,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
