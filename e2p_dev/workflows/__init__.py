"""The example workflows' authoring: graphs (what each workflow holds), the files and server they run on
(environment), the headless frontend driver (frontend) and the build that writes example_workflows/ (build)."""
