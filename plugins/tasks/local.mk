# plugins/tasks/local.mk - task plugins
