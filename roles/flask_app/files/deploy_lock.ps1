# Take, take over, report or release a host's deploy lock (roles/flask_app/tasks/lock.yml, unlock.yml).
# The lock is a file holding its holder's name. Taking it is a CreateNew open - it fails when the file exists,
# so two runs cannot both take it - with an ACL of SYSTEM and Administrators only. Prints (the result):
# taken | held (already this holder's) | busy <age s> <holder> | released | kept.
# $Ansible.Changed is true only when the file was created or removed (the task reports changed=0 regardless:
# the lock is the run's bookkeeping); check mode changes nothing.
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)][string]$Path,
    [Parameter(Mandatory)][string]$Holder,
    [string]$From = '',
    [bool]$Release = $false
)
# win_powershell starts every script with Changed = $true.
$Ansible.Changed = $false
$ErrorActionPreference = 'Stop'

function Read-Holder {
    if (Test-Path -LiteralPath $Path -PathType Leaf) { ([System.IO.File]::ReadAllText($Path)).Trim() } else { '' }
}

if ($Release) {
    $Ansible.Result = 'kept'
    if ((Read-Holder) -eq $Holder -and $PSCmdlet.ShouldProcess($Path, 'Release the deploy lock')) {
        Remove-Item -LiteralPath $Path -Force
        $Ansible.Changed = $true
        $Ansible.Result = 'released'
    }
    return
}
if ($From -and (Read-Holder) -eq $From -and $PSCmdlet.ShouldProcess($Path, 'Take over the deploy lock')) {
    Remove-Item -LiteralPath $Path -Force
}
$security = New-Object -TypeName System.Security.AccessControl.FileSecurity
$security.SetAccessRuleProtection($true, $false)
foreach ($sid in 'S-1-5-18', 'S-1-5-32-544') {
    $account = New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList $sid
    $rule = New-Object -TypeName System.Security.AccessControl.FileSystemAccessRule -ArgumentList $account, 'FullControl', 'Allow'
    $security.AddAccessRule($rule)
}
try {
    if ($PSCmdlet.ShouldProcess($Path, 'Take the deploy lock')) {
        $stream = [System.IO.FileStream]::new($Path, [System.IO.FileMode]::CreateNew,
            [System.Security.AccessControl.FileSystemRights]::Write, [System.IO.FileShare]::None, 4096,
            [System.IO.FileOptions]::None, $security)
        try {
            $bytes = [System.Text.Encoding]::UTF8.GetBytes($Holder)
            $stream.Write($bytes, 0, $bytes.Length)
        }
        finally {
            $stream.Dispose()
        }
        $Ansible.Changed = $true
    }
    $Ansible.Result = 'taken'
}
catch {
    # CreateNew failed because the file exists: someone holds the lock. Anything else is an error.
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
        throw
    }
    $current = Read-Holder
    if ($current -eq $Holder) {
        $Ansible.Result = 'held'
        return
    }
    $age = [int]((Get-Date) - (Get-Item -LiteralPath $Path).LastWriteTime).TotalSeconds
    $Ansible.Result = "busy $age $current"
}
